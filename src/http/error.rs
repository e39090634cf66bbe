//! The HTTP error type: every failure a client can see, its status and its stable code.
//!
//! [`ApiError`] is a ranking error ([`RankError`], shared with every protocol, which owns its code)
//! or one only HTTP has (body, media type, probes, admin). Each enum is mapped to statuses by one
//! exhaustive `match` (no `_ =>`): adding a variant forces a decision about its status. Codes are part
//! of the API (docs/api.md) and never change meaning. Internal details go to the log; the client gets
//! the code and a message naming the offending field.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::negotiate::Encoding;
use crate::api::{ErrorBody, ErrorDetail};
use crate::registry::LifecycleError;
use crate::request::RequestError;
use crate::service::RankError;

/// An HTTP failure: a ranking error (shared with every protocol) or one only HTTP has.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Rank(#[from] RankError),
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error(
        "content type {0:?} is not supported; send application/json or application/x-protobuf"
    )]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("not ready: no verified model is live")]
    NotReady,
    #[error(
        "shutting down: this instance finishes its in-flight requests and takes no new traffic"
    )]
    ShuttingDown,
    #[error("no such route")]
    RouteNotFound,
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
}

/// The HTTP status of each ranking error.
fn rank_status(e: &RankError) -> StatusCode {
    match e {
        RankError::MalformedJson(_) | RankError::MalformedProtobuf(_) => StatusCode::BAD_REQUEST,
        RankError::InvalidRequest(_)
        | RankError::Limit(
            RequestError::InvalidK { .. }
            | RequestError::EmptyCandidates
            | RequestError::TooManyCandidates { .. }
            | RequestError::TooManyBehaviors { .. },
        )
        | RankError::InvalidFeature(_)
        | RankError::UnknownBucket(_)
        | RankError::ModelRequired(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RankError::ModelNotFound(_) => StatusCode::NOT_FOUND,
        RankError::NoModel
        | RankError::BucketUnavailable { .. }
        | RankError::VersionUnavailable { .. }
        | RankError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        RankError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        RankError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// Status and stable code of each error.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Rank(e) => (rank_status(e), e.code()),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ApiError::VersionNotFound(_) => (StatusCode::NOT_FOUND, "version_not_found"),
            ApiError::VersionIncomplete(_) => (StatusCode::CONFLICT, "version_incomplete"),
            ApiError::VersionFailed(_) => (StatusCode::CONFLICT, "version_failed"),
            ApiError::NoPreviousVersion(_) => (StatusCode::CONFLICT, "no_previous_version"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_code().0
    }

    /// An internal failure (logged in full, answered as `internal`).
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::Rank(RankError::Internal(detail.into()))
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let msg = e.to_string();
        match e {
            LifecycleError::InvalidModelName(_) | LifecycleError::InvalidVersion(_) => {
                ApiError::InvalidName(msg)
            }
            LifecycleError::UnknownModel(m) => RankError::ModelNotFound(format!("{m:?}")).into(),
            LifecycleError::NoSuchVersion { .. } => ApiError::VersionNotFound(msg),
            LifecycleError::Incomplete { .. } => ApiError::VersionIncomplete(msg),
            LifecycleError::LoadFailed { .. } => ApiError::VersionFailed(msg),
            LifecycleError::NoPreviousVersion(_) => ApiError::NoPreviousVersion(msg),
            LifecycleError::Io(detail) => ApiError::internal(detail),
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
        if let ApiError::Rank(RankError::Internal(detail)) = &self {
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
