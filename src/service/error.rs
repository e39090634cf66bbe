//! [`RankError`]: every way a ranking request can fail, whichever protocol carried it.
//!
//! Each variant has a stable, machine-readable code ([`RankError::code`], listed in docs/api.md; a
//! code never changes meaning) and a message that names the offending field. Protocol adapters map
//! the variants to their own status codes with one exhaustive `match` each (HTTP:
//! `crate::http::error`), so adding a variant forces a decision in every adapter.

use crate::buckets::BucketError;
use crate::model::ModelError;
use crate::registry::RegistryError;
use crate::request::RequestError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankError {
    /// The JSON body is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The protobuf body is not a decodable `RankRequest`.
    #[error("malformed protobuf: {0}")]
    MalformedProtobuf(String),
    /// Well-formed, but not a request (wrong type, missing or unknown field, bad override).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Outside the server's limits (k, candidates, behaviours).
    #[error(transparent)]
    Limit(#[from] RequestError),
    /// A feature value the model's feature spec cannot map.
    #[error("{0}")]
    InvalidFeature(String),
    #[error("{0}")]
    UnknownBucket(String),
    #[error("model: {0} is not loaded")]
    ModelNotFound(String),
    #[error("{0}")]
    ModelRequired(String),
    #[error("no model is loaded yet")]
    NoModel,
    #[error("bucket {bucket:?} has no verified model live: {reason}")]
    BucketUnavailable { bucket: String, reason: String },
    #[error("version {version} of model {model:?} is not loaded")]
    VersionUnavailable { model: String, version: u64 },
    #[error("server is at its limit of concurrent ranking requests; retry shortly")]
    Overloaded,
    #[error("the request took longer than its limit of {0} ms")]
    Timeout(u64),
    /// A bug or an environment failure; the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl RankError {
    /// The stable error code (docs/api.md).
    pub fn code(&self) -> &'static str {
        match self {
            RankError::MalformedJson(_) => "malformed_json",
            RankError::MalformedProtobuf(_) => "malformed_protobuf",
            RankError::InvalidRequest(_) => "invalid_request",
            RankError::Limit(RequestError::InvalidK { .. }) => "invalid_k",
            RankError::Limit(RequestError::EmptyCandidates) => "empty_candidates",
            RankError::Limit(RequestError::TooManyCandidates { .. }) => "too_many_candidates",
            RankError::Limit(RequestError::TooManyBehaviors { .. }) => "too_many_behaviors",
            RankError::InvalidFeature(_) => "invalid_feature",
            RankError::UnknownBucket(_) => "unknown_bucket",
            RankError::ModelNotFound(_) => "model_not_found",
            RankError::ModelRequired(_) => "model_required",
            RankError::NoModel => "no_model",
            RankError::BucketUnavailable { .. } => "bucket_unavailable",
            RankError::VersionUnavailable { .. } => "version_unavailable",
            RankError::Overloaded => "overloaded",
            RankError::Timeout(_) => "timeout",
            RankError::Internal(_) => "internal",
        }
    }
}

impl From<ModelError> for RankError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Feature { .. } => RankError::InvalidFeature(e.to_string()),
            ModelError::Weights(m) => RankError::Internal(m),
        }
    }
}

impl From<RegistryError> for RankError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownModel(m) => RankError::ModelNotFound(format!("{m:?}")),
            RegistryError::NoModel => RankError::NoModel,
            RegistryError::AmbiguousModel(_) => RankError::ModelRequired(e.to_string()),
            RegistryError::VersionNotLoaded { model, version } => {
                RankError::VersionUnavailable { model, version }
            }
        }
    }
}

impl From<BucketError> for RankError {
    fn from(e: BucketError) -> Self {
        match e {
            BucketError::Unknown(..) => RankError::UnknownBucket(e.to_string()),
        }
    }
}
