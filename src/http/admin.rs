//! The admin API: model lifecycle operations, on its own listener (`--admin-bind`), behind a bearer
//! token (`--admin-token`).
//!
//! Every route, including unknown ones, requires `Authorization: Bearer <token>`; the token is compared
//! in constant time (only its length can leak). Model names and versions from the path are validated
//! (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, canonical positive integers) before any path is built, so no
//! input can reach outside the model root. Operations run on the blocking pool (they load and verify
//! snapshots) and answer with the model's report after the change.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prerank_format::manifest::valid_model_name;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::buckets::{BucketSpec, Buckets};
use crate::registry::{parse_version, LifecycleError, ModelReport, Registry};
use crate::telemetry;

/// A secret string from a flag or the environment: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself (compare it in constant time).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// What admin handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub buckets: Arc<Buckets>,
    /// The bearer token every call must present.
    pub token: Arc<Secret>,
}

/// The admin API (see docs/operations.md).
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/v1/models", get(list))
        .route("/admin/v1/models/{model}", get(show))
        .route("/admin/v1/models/{model}/load", post(load))
        .route(
            "/admin/v1/models/{model}/versions/{version}/load",
            post(load_version),
        )
        .route("/admin/v1/models/{model}/versions/{version}/pin", post(pin))
        .route("/admin/v1/models/{model}/unpin", post(unpin))
        .route("/admin/v1/models/{model}/rollback", post(rollback))
        .route("/admin/v1/models/{model}/unload", post(unload))
        .route("/admin/v1/buckets", get(buckets))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Constant-time check of `Authorization: Bearer <token>`.
fn token_ok(state: &AdminState, headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    let want = state.token.expose().as_bytes();
    !want.is_empty() && bool::from(given.ct_eq(want))
}

async fn authorize(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if token_ok(&state, req.headers()) {
        next.run(req).await
    } else {
        tracing::warn!(path = %req.uri().path(), "admin call without a valid token");
        telemetry::record_admin("unauthorized", 401);
        ApiError::Unauthorized.into_response()
    }
}

fn model_name(s: &str) -> Result<String, ApiError> {
    if valid_model_name(s) {
        Ok(s.to_string())
    } else {
        Err(LifecycleError::InvalidModelName(s.to_string()).into())
    }
}

fn version(s: &str) -> Result<u64, ApiError> {
    parse_version(s).ok_or_else(|| LifecycleError::InvalidVersion(s.to_string()).into())
}

/// Runs one lifecycle operation on the blocking pool and answers with the model report.
async fn operate(
    op: &'static str,
    state: &AdminState,
    model: Result<String, ApiError>,
    version: Option<Result<u64, ApiError>>,
    f: impl FnOnce(&Registry, &str, Option<u64>) -> Result<ModelReport, LifecycleError> + Send + 'static,
) -> Response {
    let result = async {
        let model = model?;
        let version = version.transpose()?;
        let registry = Arc::clone(&state.registry);
        let m = model.clone();
        let report = tokio::task::spawn_blocking(move || f(&registry, &m, version))
            .await
            .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))??;
        tracing::info!(op, model, ?version, serving = ?report.serving, "admin operation done");
        Ok::<_, ApiError>(report)
    }
    .await;
    match result {
        Ok(report) => {
            telemetry::record_admin(op, 200);
            Json(report).into_response()
        }
        Err(e) => {
            tracing::warn!(op, error = %e, "admin operation refused");
            telemetry::record_admin(op, e.status().as_u16());
            e.into_response()
        }
    }
}

#[derive(Debug, Serialize)]
struct ModelList {
    models: Vec<ModelReport>,
}

async fn list(State(state): State<AdminState>) -> Response {
    let registry = Arc::clone(&state.registry);
    match tokio::task::spawn_blocking(move || registry.report()).await {
        Ok(models) => Json(ModelList { models }).into_response(),
        Err(e) => ApiError::internal(format!("admin task failed: {e}")).into_response(),
    }
}

async fn show(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    let model = match model_name(&model) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let registry = Arc::clone(&state.registry);
    let known = registry.root().join(&model).is_dir() || registry.live_version(&model).is_some();
    if !known {
        return ApiError::from(LifecycleError::UnknownModel(model)).into_response();
    }
    match tokio::task::spawn_blocking(move || registry.report_model(&model)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => ApiError::internal(format!("admin task failed: {e}")).into_response(),
    }
}

async fn load(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    operate("load", &state, model_name(&model), None, |r, m, v| {
        r.load(m, v)
    })
    .await
}

async fn load_version(
    State(state): State<AdminState>,
    Path((model, v)): Path<(String, String)>,
) -> Response {
    operate(
        "load_version",
        &state,
        model_name(&model),
        Some(version(&v)),
        |r, m, v| r.load(m, v),
    )
    .await
}

async fn pin(
    State(state): State<AdminState>,
    Path((model, v)): Path<(String, String)>,
) -> Response {
    operate(
        "pin",
        &state,
        model_name(&model),
        Some(version(&v)),
        |r, m, v| match v {
            Some(v) => r.pin(m, v),
            None => Err(LifecycleError::InvalidVersion(String::new())),
        },
    )
    .await
}

async fn unpin(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    operate("unpin", &state, model_name(&model), None, |r, m, _| {
        r.unpin(m)
    })
    .await
}

async fn rollback(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    operate("rollback", &state, model_name(&model), None, |r, m, _| {
        r.rollback(m)
    })
    .await
}

async fn unload(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    operate("unload", &state, model_name(&model), None, |r, m, _| {
        r.unload(m)
    })
    .await
}

#[derive(Debug, Serialize)]
struct BucketList<'a> {
    salt: &'a str,
    pinned: Option<&'a str>,
    buckets: &'a [BucketSpec],
}

async fn buckets(State(state): State<AdminState>) -> Response {
    let b = &state.buckets;
    Json(BucketList {
        salt: b.salt(),
        pinned: b.pinned(),
        buckets: b.buckets(),
    })
    .into_response()
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}
