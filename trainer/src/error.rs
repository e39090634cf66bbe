//! Error types, one per layer: data (logs, Parquet, encoding), training (candle, checkpoints) and
//! export (snapshot writing, golden checks). `anyhow` is used only in `main`.

use std::path::{Path, PathBuf};

/// Reading, writing or encoding impression logs.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("log schema: {0}")]
    Schema(String),
    #[error("json: {0}")]
    Json(serde_json::Error),
    #[error("feature {feature:?}: {source}")]
    Feature {
        feature: String,
        source: prerank_format::features::FeatureValueError,
    },
    #[error("no {0} data: the log has no impressions for it")]
    Empty(&'static str),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Building, training, evaluating or checkpointing a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Turning a trained model into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("snapshot format: {0}")]
    Format(#[from] prerank_format::FormatError),
    #[error("export: {0}")]
    Invalid(String),
}
