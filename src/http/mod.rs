//! The HTTP layer: the only module that knows axum and tower.
//!
//! [`router`] builds the whole API from an [`AppState`], so tests drive it in-process (`oneshot`) or on
//! a real socket. Handlers decode and validate on the async executor (cheap), then run the user tower
//! and scoring (CPU-bound) on the blocking pool, bounded by a semaphore: when `max_inflight` requests
//! are already computing, a new one is refused at once with 503 + `Retry-After` instead of queueing.
//! Every error becomes `{"error": {"code", "message"}}` through one exhaustive match in [`ApiError`].
//!
//! Each ranking request is routed to an A/B bucket first ([`crate::buckets`]), then takes one
//! `Arc<Snapshot>` of that bucket's model and version for its whole life. The admin API is a separate
//! router ([`admin_router`]) served on its own listener.

mod admin;
mod error;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::Semaphore;

pub use admin::{admin_router, AdminState, Secret};
pub use error::ApiError;

use crate::api::{parse_json, ParseError, RankRequest, RankResponse, RankedItem};
use crate::buckets::{BucketSpec, Buckets, BUCKET_HEADER};
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
}

impl AppState {
    pub fn new(registry: Arc<Registry>, limits: Limits) -> AppState {
        AppState {
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            registry,
            limits,
            metrics: telemetry::prometheus_handle(),
            buckets: Arc::new(Buckets::none()),
        }
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
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

thread_local! {
    /// Per-blocking-thread scoring buffers, reused across requests.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(()); // lenient: a missing content type is read as JSON
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(essence.to_string()))
    }
}

fn request_id(headers: &HeaderMap, body_id: Option<&str>) -> String {
    if let Some(id) = body_id.filter(|s| !s.is_empty()) {
        return id.chars().take(128).collect();
    }
    if let Some(id) = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
    {
        return id.chars().take(128).collect();
    }
    format!("{:032x}", rand::random::<u128>())
}

async fn rank(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (result, labels) = rank_inner(&state, &headers, body, started).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    telemetry::record_request("/v1/rank", status.as_u16(), &labels, started.elapsed());
    match result {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rank_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> (Result<RankResponse, ApiError>, telemetry::Labels) {
    let mut labels = telemetry::Labels::default();
    let result = async {
        check_content_type(headers)?;
        let body = body.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(state.limits.max_body_bytes)
            } else {
                ApiError::BadBody(rej.body_text())
            }
        })?;
        let req: RankRequest = parse_json(&body).map_err(|e| match e {
            ParseError::Syntax(m) => ApiError::MalformedJson(m),
            ParseError::Shape(m) => ApiError::InvalidRequest(m),
        })?;
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
        let permit = Arc::clone(&state.inflight)
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded)?;
        let k = req.k as usize;
        let request_id = request_id(headers, req.request_id.as_deref());
        let candidates = req.candidates.len();
        let with_probability = req.with_probability;
        let snap_for_work = Arc::clone(&snap);
        let ranked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            SCRATCH.with(|s| snap_for_work.rank(&req, k, &mut s.borrow_mut()))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("scoring task failed: {e}")))??;
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.registry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
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
