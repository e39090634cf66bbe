//! The HTTP layer: the only module that knows axum and tower.
//!
//! [`router`] builds the whole API from an [`AppState`], so tests drive it in-process (`oneshot`) or on
//! a real socket. Handlers decode and validate on the async executor (cheap), then run the user tower
//! and scoring (CPU-bound) on the blocking pool, bounded by a semaphore: when `max_inflight` requests
//! are already computing, a new one is refused at once with 503 + `Retry-After` instead of queueing.
//! Every error becomes `{"error": {"code", "message"}}` through one exhaustive match in [`ApiError`].
//!
//! `POST /v1/rank` also speaks protobuf ([`crate::proto`]): [`negotiate`] picks the request decoder from
//! `Content-Type` and the response (and error) encoding from `Accept`. Both decoders produce the same
//! [`RankRequest`], so validation and errors are shared. The in-flight permit is taken before the body
//! is read, so shedding under overload costs neither a body read nor a decode.
//!
//! Every request passes through [`track`] first: it takes the request id from `x-request-id` (or
//! generates one), opens a tracing span with it, counts the request as in flight (what graceful
//! shutdown waits for) and echoes the id in the response's `x-request-id` header. Ranking work has a
//! deadline (`request_timeout`): past it the client gets 504 `timeout` at once (the blocking task
//! finishes in the background and keeps its in-flight permit, so the bound on CPU work still holds).
//! [`Lifecycle`] carries the draining flag: once set, `/readyz` answers 503 `shutting_down` while
//! requests keep being served, so load balancers stop sending traffic before the listener closes.
//! `GET /openapi.json` serves the OpenAPI 3.1 document generated (utoipa) from the wire types in
//! [`crate::api`] and the route annotations below ([`ApiDoc`]).
//! Connections themselves (header read timeout, header size) are served by [`serve`].
//!
//! Each ranking request is routed to an A/B bucket first ([`crate::buckets`]), then takes one
//! `Arc<Snapshot>` of that bucket's model and version for its whole life. The admin API is a separate
//! router ([`admin_router`]) served on its own listener.

mod admin;
mod error;
mod negotiate;
mod serve;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use admin::{admin_router, AdminState, Secret};
pub use error::ApiError;
pub use negotiate::Encoding;
pub use serve::{serve, ConnLimits};

use crate::api::{parse_json, ParseError, RankRequest, RankResponse, RankedItem};
use crate::buckets::{BucketSpec, Buckets, BUCKET_HEADER};
use crate::model::UserInput;
use crate::proto::ProtoError;
use crate::registry::{Registry, RegistryError, VersionStatus};
use crate::scoring::Scratch;
use crate::snapshot::SnapshotInfo;
use crate::telemetry;

/// Request limits; defaults are documented in docs/api.md and `prerank serve --help`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_candidates: usize,
    pub max_behaviors: usize,
    pub max_k: usize,
    pub max_inflight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_candidates: 200_000,
            max_behaviors: 1_000,
            max_k: 10_000,
            max_inflight: 64,
        }
    }
}

/// Everything handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// Permits for CPU work in flight; see the module doc.
    pub inflight: Arc<Semaphore>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The A/B bucket plan (none configured by default).
    pub buckets: Arc<Buckets>,
    /// Draining flag and requests in flight (graceful shutdown).
    pub lifecycle: Arc<Lifecycle>,
    /// Deadline of one ranking request, from its arrival (`None`: no deadline).
    pub request_timeout: Option<Duration>,
    /// (model, version) pairs whose mapped-bytes gauge was last reported non-zero, so a retired
    /// version's gauge is set back to 0.
    mapped_reported: Arc<Mutex<BTreeSet<(String, u64)>>>,
}

/// What graceful shutdown needs from the request path: a draining flag (readiness 503) and the
/// number of requests in flight (probes and `/metrics` excluded).
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Lifecycle {
    /// From now on `/readyz` answers 503 `shutting_down`; requests are still served.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests being handled now (probes and `/metrics` excluded).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight for its whole life (also when its future is dropped).
struct InFlight(Arc<Lifecycle>);

impl InFlight {
    fn new(l: &Arc<Lifecycle>) -> InFlight {
        let n = l.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!(telemetry::IN_FLIGHT_REQUESTS).set(n as f64);
        InFlight(Arc::clone(l))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!(telemetry::IN_FLIGHT_REQUESTS).set(n as f64);
    }
}

/// The id of one request (from `x-request-id`, or generated), stored as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl AppState {
    pub fn new(registry: Arc<Registry>, limits: Limits) -> AppState {
        AppState {
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            registry,
            limits,
            metrics: telemetry::prometheus_handle(),
            buckets: Arc::new(Buckets::none()),
            lifecycle: Arc::new(Lifecycle::default()),
            request_timeout: None,
            mapped_reported: Arc::default(),
        }
    }

    /// The same state with a deadline per ranking request.
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> AppState {
        self.request_timeout = timeout;
        self
    }

    /// The same state with a bucket plan.
    pub fn with_buckets(mut self, buckets: Arc<Buckets>) -> AppState {
        self.buckets = buckets;
        self
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/rank", post(rank))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A usable client-supplied request id: 1..=128 visible ASCII characters.
fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.into())
}

/// Request id, tracing span, in-flight count and `x-request-id` echo for every request.
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let path = req.uri().path().to_owned();
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %path);
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    let _counted = (!probe).then(|| InFlight::new(&state.lifecycle));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
    if !resp.headers().contains_key(REQUEST_ID_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "request done"));
    resp
}

/// The OpenAPI document of the ranking API (`GET /openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "prerank",
        description = "Coarse ranking for distilled two-tower recommenders (docs/api.md)."
    ),
    paths(rank, models, healthz, readyz, metrics, openapi),
    components(schemas(
        crate::api::RankRequest,
        crate::api::UserJson,
        crate::api::BehaviorJson,
        crate::api::RankResponse,
        crate::api::RankedItem,
        crate::api::ErrorBody,
        crate::api::ErrorDetail
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The document, as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        openapi_document()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

thread_local! {
    /// Per-blocking-thread scoring buffers, reused across requests.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The response's request id: the body's `request_id` if given, else the header's (or generated) one.
fn request_id(headers: &HeaderMap, tracked: Option<&RequestId>, body_id: Option<&str>) -> String {
    if let Some(id) = body_id.filter(|s| !s.is_empty()) {
        return id.chars().take(128).collect();
    }
    if let Some(id) = tracked {
        return id.0.clone();
    }
    if let Some(id) = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
    {
        return id.chars().take(128).collect();
    }
    format!("{:032x}", rand::random::<u128>())
}

/// The user tower and scoring of one request, timed separately (the same steps as
/// [`crate::snapshot::Snapshot::rank`], split so each stage has its own latency histogram).
fn rank_timed(
    snap: &crate::snapshot::Snapshot,
    req: &RankRequest,
    k: usize,
    scratch: &mut Scratch,
) -> Result<crate::snapshot::RankResult, ApiError> {
    let dtype = snap.info().dtype;
    let Some(vectors) = snap.files().vectors.iter().find(|v| v.dtype() == dtype) else {
        // Not reachable for a loaded snapshot; fall back to the snapshot's own entry point.
        return Ok(snap.rank(req, k, scratch)?);
    };
    let t = Instant::now();
    let input = UserInput::from_json(&req.user)?;
    let ignored_features = snap.layout().ignored_features(&input);
    let u = snap.user_vector(&input)?;
    telemetry::record_stage(telemetry::STAGE_TOWER, t.elapsed());
    let t = Instant::now();
    let (items, stats) = crate::parallel::rank(
        &u,
        snap.manifest().tau,
        vectors,
        &snap.files().index,
        &req.candidates,
        k,
        scratch,
        true,
    );
    telemetry::record_stage(telemetry::STAGE_SCORING, t.elapsed());
    Ok(crate::snapshot::RankResult {
        items,
        stats,
        ignored_features,
    })
}

/// Ranks the candidates for one user and returns the top k.
///
/// JSON by default. The same request and response also exist in protobuf (schema
/// `proto/prerank/v1/rank.proto`, package `prerank.v1`; candidates are packed `fixed64`): send
/// `Content-Type: application/x-protobuf` (or `application/protobuf`, `application/vnd.google.protobuf`).
/// The response follows `Accept` when it names exactly one of `application/json` and
/// `application/x-protobuf`, else the request's encoding; errors are encoded the same way (protobuf
/// `ErrorBody {code, message}`, same status and code). Undecodable protobuf is 400 `malformed_protobuf`.
#[utoipa::path(
    post,
    path = "/v1/rank",
    request_body(content = crate::api::RankRequest, content_type = "application/json"),
    params(
        ("x-request-id" = Option<String>, Header, description = "Request id (echoed; generated when absent)"),
        ("x-prerank-bucket" = Option<String>, Header, description = "A/B bucket override (QA)")
    ),
    responses(
        (status = 200, description = "Top-k items", body = crate::api::RankResponse),
        (status = 400, description = "Malformed JSON or protobuf, or unreadable body", body = crate::api::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::api::ErrorBody),
        (status = 413, description = "Body larger than the limit", body = crate::api::ErrorBody),
        (status = 415, description = "Content type is neither JSON nor protobuf", body = crate::api::ErrorBody),
        (status = 422, description = "Well-formed but invalid request", body = crate::api::ErrorBody),
        (status = 503, description = "Overloaded, not ready or bucket unavailable (Retry-After)", body = crate::api::ErrorBody),
        (status = 504, description = "Past the request deadline", body = crate::api::ErrorBody)
    )
)]
async fn rank(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let tracked = req.extensions().get::<RequestId>().cloned();
    let headers = req.headers().clone();
    let request_encoding = negotiate::request_encoding(&headers);
    let response_encoding =
        negotiate::response_encoding(&headers, request_encoding.as_ref().ok().copied());
    let (result, labels) = match request_encoding {
        Ok(encoding) => {
            rank_inner(&state, &headers, tracked.as_ref(), encoding, req, started).await
        }
        Err(e) => (Err(e), telemetry::Labels::default()),
    };
    let (id, response) = match result {
        Ok(resp) => {
            let t = Instant::now();
            let encoded = match response_encoding {
                Encoding::Json => serde_json::to_vec(&resp),
                Encoding::Protobuf => Ok(crate::proto::encode_response(&resp)),
            };
            telemetry::record_stage(telemetry::STAGE_ENCODE, t.elapsed());
            let id = resp.request_id;
            match encoded {
                Ok(bytes) => (
                    Some(id),
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, response_encoding.content_type())],
                        bytes,
                    )
                        .into_response(),
                ),
                Err(e) => (
                    Some(id),
                    ApiError::Internal(format!("encoding the response: {e}"))
                        .into_response_as(response_encoding),
                ),
            }
        }
        Err(e) => (None, e.into_response_as(response_encoding)),
    };
    telemetry::record_request(
        "/v1/rank",
        response.status().as_u16(),
        &labels,
        started.elapsed(),
    );
    let mut response = response;
    if let Some(v) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Decodes a request body in its encoding; errors keep the codes of [`ApiError`] (JSON syntax 400
/// `malformed_json`, undecodable protobuf 400 `malformed_protobuf`, shape 422 `invalid_request`).
fn decode_body(body: &[u8], encoding: Encoding) -> Result<RankRequest, ApiError> {
    match encoding {
        Encoding::Json => parse_json(body).map_err(|e| match e {
            ParseError::Syntax(m) => ApiError::MalformedJson(m),
            ParseError::Shape(m) => ApiError::InvalidRequest(m),
        }),
        Encoding::Protobuf => crate::proto::decode_request(body).map_err(|e| match e {
            ProtoError::Malformed(m) => ApiError::MalformedProtobuf(m),
            ProtoError::Shape(m) => ApiError::InvalidRequest(m),
            ProtoError::Feature(m) => ApiError::InvalidFeature(m),
        }),
    }
}

async fn rank_inner(
    state: &AppState,
    headers: &HeaderMap,
    tracked: Option<&RequestId>,
    encoding: Encoding,
    http_req: Request,
    started: Instant,
) -> (Result<RankResponse, ApiError>, telemetry::Labels) {
    let mut labels = telemetry::Labels::default();
    let result = async {
        // Shed before reading the body: under overload a refused request costs no body read and no
        // decode, so the accepted requests' latency does not grow with the number of connections.
        // The permit is held through decoding and scoring.
        let permit = Arc::clone(&state.inflight)
            .try_acquire_owned()
            .map_err(|_| {
                telemetry::record_shed(telemetry::SHED_OVERLOADED);
                ApiError::Overloaded
            })?;
        // The same extractor (and so the same `DefaultBodyLimit`, 413 and 400) as before, only after
        // the permit. The read counts against the request's deadline, so a client that trickles its
        // body cannot hold a permit longer than that.
        let read = Bytes::from_request(http_req, state);
        let read = match state.request_timeout {
            Some(limit) => {
                let left = limit.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        telemetry::record_shed(telemetry::SHED_TIMEOUT);
                        return Err(ApiError::Timeout(limit.as_millis() as u64));
                    }
                }
            }
            None => read.await,
        };
        let body = read.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(state.limits.max_body_bytes)
            } else {
                ApiError::BadBody(rej.body_text())
            }
        })?;
        let req = decode_body(&body, encoding)?;
        drop(body);
        let limits = &state.limits;
        if req.k <= 0 || req.k as u64 > limits.max_k as u64 {
            return Err(ApiError::InvalidK {
                k: req.k,
                max: limits.max_k,
            });
        }
        if req.candidates.is_empty() {
            return Err(ApiError::EmptyCandidates);
        }
        if req.candidates.len() > limits.max_candidates {
            return Err(ApiError::TooManyCandidates {
                found: req.candidates.len(),
                max: limits.max_candidates,
            });
        }
        if req.user.behaviors.len() > limits.max_behaviors {
            return Err(ApiError::TooManyBehaviors {
                found: req.user.behaviors.len(),
                max: limits.max_behaviors,
            });
        }
        let header_bucket = match headers.get(BUCKET_HEADER) {
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::InvalidRequest(format!("{BUCKET_HEADER}: not valid ASCII"))
            })?),
            None => None,
        };
        let route = state.buckets.route(
            req.bucket.as_deref().or(header_bucket),
            req.model.as_deref(),
            req.user.id.as_ref(),
        )?;
        if route.labelled {
            labels.bucket = route.bucket.clone();
        }
        let snap = match (&route.model, route.from_plan) {
            (Some(m), true) => {
                state
                    .registry
                    .get_version(m, route.version)
                    .map_err(|e| match e {
                        RegistryError::UnknownModel(_)
                        | RegistryError::NoModel
                        | RegistryError::AmbiguousModel(_)
                        | RegistryError::VersionNotLoaded { .. } => ApiError::BucketUnavailable {
                            bucket: route.bucket.clone(),
                            reason: e.to_string(),
                        },
                    })?
            }
            (m, _) => state.registry.get(m.as_deref())?,
        };
        labels.model = snap.info().model.clone();
        labels.version = snap.info().version.to_string();
        telemetry::record_stage(telemetry::STAGE_DECODE, started.elapsed());
        let k = req.k as usize;
        let request_id = request_id(headers, tracked, req.request_id.as_deref());
        let candidates = req.candidates.len();
        let with_probability = req.with_probability;
        let snap_for_work = Arc::clone(&snap);
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            SCRATCH.with(|s| rank_timed(&snap_for_work, &req, k, &mut s.borrow_mut()))
        });
        let joined = match state.request_timeout {
            Some(limit) => {
                let left = limit.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, work).await {
                    Ok(j) => j,
                    Err(_) => {
                        telemetry::record_shed(telemetry::SHED_TIMEOUT);
                        return Err(ApiError::Timeout(limit.as_millis() as u64));
                    }
                }
            }
            None => work.await,
        };
        let ranked =
            joined.map_err(|e| ApiError::Internal(format!("scoring task failed: {e}")))??;
        telemetry::record_rank(&labels, candidates, ranked.stats.unknown);
        let info = snap.info();
        Ok(RankResponse {
            request_id,
            bucket: route.bucket,
            model: info.model.clone(),
            version: info.version,
            items: ranked
                .items
                .iter()
                .map(|s| RankedItem {
                    item_id: s.item_id,
                    score: s.score,
                    probability: with_probability.then(|| 1.0 / (1.0 + (-s.score).exp())),
                })
                .collect(),
            candidates,
            unknown_candidates: ranked.stats.unknown,
            unknown_candidate_ids: ranked.stats.unknown_sample,
            duplicate_candidates: ranked.stats.duplicates,
            ignored_features: ranked.ignored_features,
            dtype: info.dtype.to_string(),
            took_us: started.elapsed().as_micros() as u64,
        })
    }
    .await;
    (result, labels)
}

#[derive(Debug, Serialize)]
struct ModelsResponse {
    models: Vec<ModelEntry>,
    /// The bucket plan and what each bucket serves now (omitted without a bucket config).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    buckets: Vec<BucketEntry>,
}

#[derive(Debug, Serialize)]
struct BucketEntry {
    #[serde(flatten)]
    spec: BucketSpec,
    /// Whether this container serves the bucket (all, unless pinned by PRERANK_BUCKET).
    served_here: bool,
    /// The version live for this bucket now (`null`: not ready).
    live_version: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ModelEntry {
    name: String,
    /// The live snapshot, if any version of this model is being served.
    live: Option<SnapshotInfo>,
    /// Every version the server has tried, newest first.
    versions: Vec<VersionStatus>,
}

/// Loaded models, every version tried with its status, and the bucket plan.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses((status = 200, description = "Models, versions and buckets (docs/api.md)", body = Object))
)]
async fn models(State(state): State<AppState>) -> Json<ModelsResponse> {
    let live = state.registry.live();
    let mut status = state.registry.status();
    let mut models: Vec<ModelEntry> = live
        .iter()
        .map(|s| ModelEntry {
            name: s.info().model.clone(),
            live: Some(s.info().clone()),
            versions: status.remove(&s.info().model).unwrap_or_default(),
        })
        .collect();
    models.extend(status.into_iter().map(|(name, versions)| ModelEntry {
        name,
        live: None,
        versions,
    }));
    models.sort_by(|a, b| a.name.cmp(&b.name));
    let pinned = state.buckets.pinned();
    let buckets = state
        .buckets
        .buckets()
        .iter()
        .map(|b| BucketEntry {
            spec: b.clone(),
            served_here: pinned.is_none_or(|p| p == b.name),
            live_version: state
                .registry
                .get_version(&b.model, b.version)
                .ok()
                .map(|s| s.info().version),
        })
        .collect();
    Json(ModelsResponse { models, buckets })
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String))
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: every configured bucket (or a model) has a verified snapshot live, and the process is
/// not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 503, description = "Not ready, or shutting down", body = crate::api::ErrorBody)
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.lifecycle.is_draining() {
        ApiError::ShuttingDown.into_response()
    } else if state.registry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Sets the mapped-bytes and huge-page gauges of every loaded version, and back to 0 for versions
/// no longer loaded.
fn report_mapped_bytes(state: &AppState) {
    let live = state.registry.live_set();
    let mut now = BTreeSet::new();
    for (name, m) in &live.models {
        for (version, snap) in &m.versions {
            // Over each file's own address range (crate::hugepages), so two maps of one file
            // (versions, background verification) are never mixed up.
            let usage = snap.memory_usage();
            telemetry::set_mapped_bytes(name, *version, snap.info().mapped_bytes);
            telemetry::set_huge_page_bytes(name, *version, usage.iter().map(|u| u.huge).sum());
            telemetry::set_resident_bytes(name, *version, usage.iter().map(|u| u.resident).sum());
            now.insert((name.clone(), *version));
        }
    }
    let mut reported = match state.mapped_reported.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    for (name, version) in reported.difference(&now) {
        telemetry::set_mapped_bytes(name, *version, 0);
        telemetry::set_huge_page_bytes(name, *version, 0);
        telemetry::set_resident_bytes(name, *version, 0);
    }
    *reported = now;
}

/// Prometheus exposition (docs/operations.md lists every metric).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    report_mapped_bytes(&state);
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::Internal("metrics recorder unavailable".into()).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}
