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
use axum::http::{header, HeaderValue, StatusCode};
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

use crate::api::{parse_json, ParseError, RankResponse};
use crate::buckets::{BucketSpec, Buckets, BUCKET_HEADER};
use crate::parallel::ScoringPool;
use crate::proto::ProtoError;
use crate::registry::{Registry, VersionStatus};
pub use crate::request::Limits;
use crate::request::RankRequest;
use crate::service::{new_request_id, BucketHint, Handled, RankError, RankService, RequestContext};
use crate::snapshot::SnapshotInfo;
use crate::telemetry;

/// Everything handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Admission, deadline, routing and the pipeline: what every protocol shares.
    pub service: RankService,
    /// The service's in-flight permits (the same semaphore; tests hold permits to simulate load).
    pub inflight: Arc<Semaphore>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Draining flag and requests in flight (graceful shutdown).
    pub lifecycle: Arc<Lifecycle>,
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
        AppState::with_service(RankService::new(registry, limits))
    }

    /// The state of a router over `service`.
    pub fn with_service(service: RankService) -> AppState {
        AppState {
            inflight: Arc::clone(service.inflight()),
            service,
            metrics: telemetry::prometheus_handle(),
            lifecycle: Arc::new(Lifecycle::default()),
            mapped_reported: Arc::default(),
        }
    }

    /// The same state with a deadline per ranking request.
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> AppState {
        self.service = self.service.with_request_timeout(timeout);
        self
    }

    /// The same state with a bucket plan.
    pub fn with_buckets(mut self, buckets: Arc<Buckets>) -> AppState {
        self.service = self.service.with_buckets(buckets);
        self
    }

    /// The same state scoring on `pool`.
    pub fn with_scoring(mut self, pool: Arc<ScoringPool>) -> AppState {
        self.service = self.service.with_scoring(pool);
        self
    }

    fn registry(&self) -> &Registry {
        self.service.registry()
    }

    fn buckets(&self) -> &Buckets {
        self.service.buckets()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.service.limits().max_body_bytes;
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
        .unwrap_or_else(new_request_id);
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
    let transport_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(new_request_id, |id| id.0.clone());
    let request_encoding = negotiate::request_encoding(req.headers());
    let response_encoding =
        negotiate::response_encoding(req.headers(), request_encoding.as_ref().ok().copied());
    let (result, labels) = match request_encoding {
        Ok(encoding) => rank_decoded(&state, encoding, req, started, &transport_id).await,
        Err(e) => (Err(e), telemetry::Labels::default()),
    };
    let (id, response) = match result.map(RankResponse::from) {
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
                    ApiError::internal(format!("encoding the response: {e}"))
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

/// Decodes a request body in its encoding; errors keep their codes (JSON syntax 400
/// `malformed_json`, undecodable protobuf 400 `malformed_protobuf`, shape 422 `invalid_request`).
fn decode_body(body: &[u8], encoding: Encoding) -> Result<RankRequest, RankError> {
    match encoding {
        Encoding::Json => parse_json::<crate::api::RankRequest>(body)
            .map(crate::api::RankRequest::into_domain)
            .map_err(|e| match e {
                ParseError::Syntax(m) => RankError::MalformedJson(m),
                ParseError::Shape(m) => RankError::InvalidRequest(m),
            }),
        Encoding::Protobuf => crate::proto::decode(body).map_err(|e| match e {
            ProtoError::Malformed(m) => RankError::MalformedProtobuf(m),
            ProtoError::Shape(m) => RankError::InvalidRequest(m),
            ProtoError::Feature(m) => RankError::InvalidFeature(m),
        }),
    }
}

/// The HTTP half of a ranking request: admission before the body is read (so shedding costs no read
/// and no decode), the body read within the deadline (a client trickling its body cannot hold a
/// permit past it), decoding, then the ranking service.
async fn rank_decoded(
    state: &AppState,
    encoding: Encoding,
    http_req: Request,
    started: Instant,
    transport_id: &str,
) -> (
    Result<crate::service::RankOutcome, ApiError>,
    telemetry::Labels,
) {
    let service = &state.service;
    let permit = match service.admit() {
        Ok(p) => p,
        Err(e) => return (Err(e.into()), telemetry::Labels::default()),
    };
    let bucket_header = http_req
        .headers()
        .get(BUCKET_HEADER)
        .map(|v| v.to_str().map(str::to_string));
    // The same extractor (and so the same `DefaultBodyLimit`, 413 and 400) as a plain `Bytes`
    // handler argument, only after the permit.
    let read = service
        .deadline(started)
        .run(Bytes::from_request(http_req, state))
        .await;
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(rej)) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let max = service.limits().max_body_bytes;
            return (
                Err(ApiError::BodyTooLarge(max)),
                telemetry::Labels::default(),
            );
        }
        Ok(Err(rej)) => {
            return (
                Err(ApiError::BadBody(rej.body_text())),
                telemetry::Labels::default(),
            )
        }
        Err(e) => return (Err(e.into()), telemetry::Labels::default()),
    };
    let req = match decode_body(&body, encoding) {
        Ok(r) => r,
        Err(e) => return (Err(e.into()), telemetry::Labels::default()),
    };
    drop(body);
    let ctx = RequestContext {
        started,
        request_id: transport_id,
        bucket_hint: match &bucket_header {
            None => BucketHint::None,
            Some(Ok(name)) => BucketHint::Given(name),
            Some(Err(_)) => BucketHint::Unreadable,
        },
    };
    let Handled { result, labels } = service.rank(permit, req, &ctx).await;
    (result.map_err(ApiError::from), labels)
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
    let live = state.registry().live();
    let mut status = state.registry().status();
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
    let pinned = state.buckets().pinned();
    let buckets = state
        .buckets()
        .buckets()
        .iter()
        .map(|b| BucketEntry {
            spec: b.clone(),
            served_here: pinned.is_none_or(|p| p == b.name),
            live_version: state
                .registry()
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
    } else if state.registry().is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Sets the mapped-bytes and huge-page gauges of every loaded version, and back to 0 for versions
/// no longer loaded.
fn report_mapped_bytes(state: &AppState) {
    let live = state.registry().live_set();
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
        None => ApiError::internal("metrics recorder unavailable").into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}
