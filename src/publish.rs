//! `prerank publish SRC MODEL_DIR [--version N]`: the safe way to put a snapshot into a model
//! repository.
//!
//! Steps (each a hard stop on failure, leaving the repository untouched):
//!
//! 1. fully verify `SRC` (checksums, contents, golden checks: the same [`Snapshot::load`] the server
//!    runs), and check its manifest names the model `MODEL_DIR` is for;
//! 2. pick the version: `--version N`, else one above the highest integer directory present;
//! 3. copy `manifest.json` (with `version` set to N; it is not covered by the file checksums) and every
//!    file the manifest lists into `MODEL_DIR/.tmp-publish-N-<pid>-<nanos>` (ignored by the server: not
//!    an integer), fsync each file;
//! 4. verify the copy again (catches a bad disk or a concurrent writer), fsync the temp directory;
//! 5. `rename(2)` it to `MODEL_DIR/N` (refusing an existing N) and fsync `MODEL_DIR`.
//!
//! A server watching the repository therefore only ever sees a complete, verified version appear.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use prerank_format::manifest::{valid_model_name, MANIFEST_FILE};
use prerank_format::writer::sync_dir;

use crate::registry::scan_versions;
use crate::snapshot::{LoadOptions, Snapshot};

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{src} is not a valid snapshot: {reason}")]
    Invalid { src: PathBuf, reason: String },
    #[error("{dir}: the model directory's name is not a valid model name")]
    BadModelDir { dir: PathBuf },
    #[error("the snapshot is for model {found:?}, the model directory is {expected:?}")]
    WrongModel { expected: String, found: String },
    #[error("version must be >= 1")]
    BadVersion,
    #[error("{0}: already exists; published versions are immutable")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the copy in {tmp} does not verify: {reason}")]
    CopyInvalid { tmp: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Publishes `src` into `model_dir` (see the module doc); returns the new version directory.
pub fn publish(
    src: &Path,
    model_dir: &Path,
    version: Option<u64>,
) -> Result<PathBuf, PublishError> {
    let opts = LoadOptions {
        huge_pages: false,
        ..LoadOptions::default()
    };
    let snap = Snapshot::load(src, &opts).map_err(|e| PublishError::Invalid {
        src: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    let model = model_dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| valid_model_name(n))
        .ok_or_else(|| PublishError::BadModelDir {
            dir: model_dir.to_path_buf(),
        })?
        .to_string();
    if snap.manifest().model != model {
        return Err(PublishError::WrongModel {
            expected: model,
            found: snap.manifest().model.clone(),
        });
    }
    let files: Vec<String> = snap.manifest().files.keys().cloned().collect();
    drop(snap);

    fs::create_dir_all(model_dir).map_err(io(model_dir))?;
    let version = match version {
        Some(0) => return Err(PublishError::BadVersion),
        Some(v) => v,
        None => {
            scan_versions(model_dir)
                .map_err(io(model_dir))?
                .first()
                .copied()
                .unwrap_or(0)
                + 1
        }
    };
    let dest = model_dir.join(version.to_string());
    if dest.exists() {
        return Err(PublishError::Exists(dest));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = model_dir.join(format!(
        ".tmp-publish-{version}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = copy_and_verify(src, &tmp, &files, version, &opts).and_then(|()| {
        if dest.exists() {
            return Err(PublishError::Exists(dest.clone()));
        }
        fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(model_dir).map_err(|e| PublishError::Io {
            path: model_dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

fn copy_and_verify(
    src: &Path,
    tmp: &Path,
    files: &[String],
    version: u64,
    opts: &LoadOptions,
) -> Result<(), PublishError> {
    for name in files {
        let from = src.join(name);
        let to = tmp.join(name);
        fs::copy(&from, &to).map_err(io(&from))?;
        File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(io(&to))?;
    }
    let manifest_path = src.join(MANIFEST_FILE);
    let text = fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let mut manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PublishError::Invalid {
            src: src.to_path_buf(),
            reason: e.to_string(),
        })?;
    if let Some(obj) = manifest.as_object_mut() {
        obj.insert("version".into(), serde_json::json!(version));
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PublishError::Invalid {
        src: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    let to = tmp.join(MANIFEST_FILE);
    File::create(&to)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(io(&to))?;
    Snapshot::load(tmp, opts).map_err(|e| PublishError::CopyInvalid {
        tmp: tmp.to_path_buf(),
        reason: e.to_string(),
    })?;
    sync_dir(tmp).map_err(|e| PublishError::Io {
        path: tmp.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
