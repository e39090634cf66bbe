//! Errors of the format layer. Every variant names the file it concerns and, where it can, what was
//! expected and what was found, so that a rejected snapshot can be fixed from the message alone.

use std::path::PathBuf;

/// Everything that can be wrong with a snapshot on disk or with the parts given to the writer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: missing (the manifest lists it)")]
    MissingFile { file: String },
    #[error("{file}: invalid manifest: {reason}")]
    Manifest { file: String, reason: String },
    #[error("{file}: unsupported format version {found} (this build reads {oldest}..={newest})")]
    UnsupportedVersion {
        file: String,
        found: u32,
        oldest: u32,
        newest: u32,
    },
    #[error("{file}: bad magic: expected {expected:?}, found {found:?}")]
    BadMagic {
        file: String,
        expected: String,
        found: String,
    },
    #[error("{file}: wrong size: expected {expected} bytes, found {found}")]
    Size {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("{file}: sha256 mismatch: manifest says {expected}, file has {found}")]
    Checksum {
        file: String,
        expected: String,
        found: String,
    },
    #[error("{file}: {field}: expected {expected}, found {found}")]
    Mismatch {
        file: String,
        field: String,
        expected: String,
        found: String,
    },
    #[error("{file}: row {row} is not L2-normalised: norm {norm} (tolerance {tolerance})")]
    NotNormalised {
        file: String,
        row: u64,
        norm: f32,
        tolerance: f32,
    },
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{path}: already exists; published versions are immutable")]
    AlreadyExists { path: PathBuf },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(file: &str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            file: file.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(
        file: &str,
        field: &str,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        FormatError::Mismatch {
            file: file.to_string(),
            field: field.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}
