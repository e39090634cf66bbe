//! The HTTP error type: every failure a client can see, its status and its stable code.
//!
//! The mapping below is one exhaustive `match` (no `_ =>`): adding a variant forces a decision about
//! its status and code. Codes are part of the API (docs/api.md) and never change meaning. Internal
//! details go to the log; the client gets the code and a message naming the offending field.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::negotiate::Encoding;
use crate::api::{ErrorBody, ErrorDetail};
use crate::buckets::BucketError;
use crate::model::ModelError;
use crate::registry::{LifecycleError, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("malformed protobuf: {0}")]
    MalformedProtobuf(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error(
        "content type {0:?} is not supported; send application/json or application/x-protobuf"
    )]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("k: must be between 1 and {max}, found {k}")]
    InvalidK { k: i64, max: usize },
    #[error("candidates: must not be empty")]
    EmptyCandidates,
    #[error("candidates: at most {max} allowed, found {found}")]
    TooManyCandidates { found: usize, max: usize },
    #[error("user.behaviors: at most {max} allowed, found {found}")]
    TooManyBehaviors { found: usize, max: usize },
    #[error("{0}")]
    InvalidFeature(String),
    #[error("model: {0} is not loaded")]
    ModelNotFound(String),
    #[error("{0}")]
    ModelRequired(String),
    #[error("no model is loaded yet")]
    NoModel,
    #[error("not ready: no verified model is live")]
    NotReady,
    #[error("server is at its limit of concurrent ranking requests; retry shortly")]
    Overloaded,
    #[error(
        "shutting down: this instance finishes its in-flight requests and takes no new traffic"
    )]
    ShuttingDown,
    #[error("the request took longer than its limit of {0} ms")]
    Timeout(u64),
    #[error("no such route")]
    RouteNotFound,
    #[error("{0}")]
    UnknownBucket(String),
    #[error("bucket {bucket:?} has no verified model live: {reason}")]
    BucketUnavailable { bucket: String, reason: String },
    #[error("version {version} of model {model:?} is not loaded")]
    VersionUnavailable { model: String, version: u64 },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    VersionNotFound(String),
    #[error("{0}")]
    VersionIncomplete(String),
    #[error("{0}")]
    VersionFailed(String),
    #[error("{0}")]
    NoPreviousVersion(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Status and stable code of each error.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::MalformedProtobuf(_) => (StatusCode::BAD_REQUEST, "malformed_protobuf"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::InvalidK { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_k"),
            ApiError::EmptyCandidates => (StatusCode::UNPROCESSABLE_ENTITY, "empty_candidates"),
            ApiError::TooManyCandidates { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too_many_candidates")
            }
            ApiError::TooManyBehaviors { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too_many_behaviors")
            }
            ApiError::InvalidFeature(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_feature"),
            ApiError::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            ApiError::ModelRequired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "model_required"),
            ApiError::NoModel => (StatusCode::SERVICE_UNAVAILABLE, "no_model"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::UnknownBucket(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_bucket"),
            ApiError::BucketUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "bucket_unavailable")
            }
            ApiError::VersionUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "version_unavailable")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ApiError::VersionNotFound(_) => (StatusCode::NOT_FOUND, "version_not_found"),
            ApiError::VersionIncomplete(_) => (StatusCode::CONFLICT, "version_incomplete"),
            ApiError::VersionFailed(_) => (StatusCode::CONFLICT, "version_failed"),
            ApiError::NoPreviousVersion(_) => (StatusCode::CONFLICT, "no_previous_version"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_code().0
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Feature { .. } => ApiError::InvalidFeature(e.to_string()),
            ModelError::Weights(m) => ApiError::Internal(m),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownModel(m) => ApiError::ModelNotFound(format!("{m:?}")),
            RegistryError::NoModel => ApiError::NoModel,
            RegistryError::AmbiguousModel(_) => ApiError::ModelRequired(e.to_string()),
            RegistryError::VersionNotLoaded { model, version } => {
                ApiError::VersionUnavailable { model, version }
            }
        }
    }
}

impl From<BucketError> for ApiError {
    fn from(e: BucketError) -> Self {
        match e {
            BucketError::Unknown(..) => ApiError::UnknownBucket(e.to_string()),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let msg = e.to_string();
        match e {
            LifecycleError::InvalidModelName(_) | LifecycleError::InvalidVersion(_) => {
                ApiError::InvalidName(msg)
            }
            LifecycleError::UnknownModel(m) => ApiError::ModelNotFound(format!("{m:?}")),
            LifecycleError::NoSuchVersion { .. } => ApiError::VersionNotFound(msg),
            LifecycleError::Incomplete { .. } => ApiError::VersionIncomplete(msg),
            LifecycleError::LoadFailed { .. } => ApiError::VersionFailed(msg),
            LifecycleError::NoPreviousVersion(_) => ApiError::NoPreviousVersion(msg),
            LifecycleError::Io(detail) => ApiError::Internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_as(Encoding::Json)
    }
}

impl ApiError {
    /// The error response in the negotiated encoding: JSON `{"error": {"code", "message"}}` or a
    /// protobuf `ErrorBody` with the same code and message; same status and headers either way.
    pub fn into_response_as(self, encoding: Encoding) -> Response {
        let (status, code) = self.status_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let message = self.to_string();
        let body = match encoding {
            Encoding::Json => Json(ErrorBody {
                error: ErrorDetail {
                    code: code.to_string(),
                    message,
                },
            })
            .into_response(),
            Encoding::Protobuf => (
                [(header::CONTENT_TYPE, crate::proto::CONTENT_TYPE)],
                crate::proto::encode_error(code, &message),
            )
                .into_response(),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
