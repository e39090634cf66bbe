//! The registry of live snapshots: model name -> the `Arc<Snapshot>` currently served.
//!
//! Readers (request handlers) take one `Arc<Snapshot>` with a lock-free `ArcSwap` load and keep it for
//! the whole request, so a response never mixes two versions and a replaced snapshot's memory maps are
//! released when its last request finishes. Writers (start-up, reloads) build and verify a complete
//! snapshot off the request path and install it with one store. Load failures are recorded per model
//! and version, so `GET /v1/models` shows why a version is not served while the last good one is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prerank_format::manifest::valid_model_name;
use serde::Serialize;

use crate::snapshot::{LoadOptions, Snapshot};

/// Errors of the registry layer (what a request can hit when choosing a model).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("model {0:?} is not loaded")]
    UnknownModel(String),
    #[error("no model is loaded yet")]
    NoModel,
    #[error("several models are loaded ({0}); name one in the request's `model` field")]
    AmbiguousModel(String),
}

/// State of one version of a model, as TF Serving reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    Loading,
    Available,
    Failed { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub version: u64,
    #[serde(flatten)]
    pub state: VersionState,
}

/// The live snapshots and the load history.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    live: ArcSwap<BTreeMap<String, Arc<Snapshot>>>,
    status: Mutex<BTreeMap<String, BTreeMap<u64, VersionState>>>,
    default_model: Option<String>,
    load_options: LoadOptions,
}

/// Integer version directories of `model_dir`, highest first. Names that are not canonical positive
/// integers (temporary `.tmp-*` directories of an in-progress publish, for instance) are ignored.
pub fn scan_versions(model_dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(model_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Ok(v) = name.parse::<u64>() {
            if v > 0 && v.to_string() == name {
                versions.push(v);
            }
        }
    }
    versions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(versions)
}

impl Registry {
    pub fn new(root: &Path, default_model: Option<String>, load_options: LoadOptions) -> Registry {
        Registry {
            root: root.to_path_buf(),
            live: ArcSwap::from_pointee(BTreeMap::new()),
            status: Mutex::new(BTreeMap::new()),
            default_model,
            load_options,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Model directories under the root (valid names only).
    pub fn model_names(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(n) = entry.file_name().to_str() {
                    if valid_model_name(n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads the newest version of `model` that verifies, trying older ones if newer ones fail, and
    /// installs it unless the same version is already live. Blocking (file I/O and checksums): call
    /// from a blocking thread. Returns the version now live, if any.
    pub fn load_latest(&self, model: &str) -> Option<u64> {
        let dir = self.root.join(model);
        let versions = match scan_versions(&dir) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(model, error = %e, "cannot list model directory");
                return self.live_version(model);
            }
        };
        for v in versions {
            if self.live_version(model) == Some(v) {
                return Some(v);
            }
            if matches!(self.state(model, v), Some(VersionState::Failed { .. })) {
                continue; // published versions are immutable: a failed one stays failed
            }
            if self.load_version(model, v).is_ok() {
                return Some(v);
            }
        }
        self.live_version(model)
    }

    /// Loads and verifies one version and installs it. The current version keeps serving on failure.
    pub fn load_version(&self, model: &str, version: u64) -> Result<(), String> {
        let dir = self.root.join(model).join(version.to_string());
        self.set_state(model, version, VersionState::Loading);
        let result = Snapshot::load(&dir, &self.load_options)
            .map_err(|e| e.to_string())
            .and_then(|snap| {
                let m = snap.manifest();
                if m.model != model || m.version != version {
                    return Err(format!(
                        "manifest says {}/{}, directory is {model}/{version}",
                        m.model, m.version
                    ));
                }
                Ok(snap)
            });
        match result {
            Ok(snap) => {
                tracing::info!(
                    model,
                    version,
                    items = snap.info().item_count,
                    dtype = %snap.info().dtype,
                    load_ms = snap.info().load_ms,
                    "snapshot loaded"
                );
                self.install(snap);
                Ok(())
            }
            Err(reason) => {
                tracing::error!(model, version, %reason, "snapshot rejected; the current version keeps serving");
                self.set_state(
                    model,
                    version,
                    VersionState::Failed {
                        reason: reason.clone(),
                    },
                );
                Err(reason)
            }
        }
    }

    /// Installs a verified snapshot as its model's live version (one atomic store).
    pub fn install(&self, snap: Snapshot) {
        let model = snap.info().model.clone();
        let version = snap.info().version;
        let snap = Arc::new(snap);
        let old_version = self.live_version(&model);
        self.live.rcu(|live| {
            let mut next = BTreeMap::clone(live);
            next.insert(model.clone(), Arc::clone(&snap));
            next
        });
        if let Some(old) = old_version.filter(|o| *o != version) {
            self.status_mut(|s| {
                s.entry(model.clone()).or_default().remove(&old);
            });
        }
        self.set_state(&model, version, VersionState::Available);
    }

    /// The snapshot a request should use: the named model, or the default one.
    pub fn get(&self, model: Option<&str>) -> Result<Arc<Snapshot>, RegistryError> {
        let live = self.live.load();
        let name = match (model, &self.default_model) {
            (Some(m), _) => m,
            (None, Some(d)) => d.as_str(),
            (None, None) => match live.len() {
                0 => return Err(RegistryError::NoModel),
                1 => live.keys().next().map(String::as_str).unwrap_or_default(),
                _ => {
                    return Err(RegistryError::AmbiguousModel(
                        live.keys().cloned().collect::<Vec<_>>().join(", "),
                    ))
                }
            },
        };
        match live.get(name) {
            Some(s) => Ok(Arc::clone(s)),
            None if live.is_empty() => Err(RegistryError::NoModel),
            None => Err(RegistryError::UnknownModel(name.to_string())),
        }
    }

    /// All live snapshots.
    pub fn live(&self) -> Vec<Arc<Snapshot>> {
        self.live.load().values().cloned().collect()
    }

    pub fn live_version(&self, model: &str) -> Option<u64> {
        self.live.load().get(model).map(|s| s.info().version)
    }

    /// Ready when at least one verified model is live (and the default model, if one is configured).
    pub fn is_ready(&self) -> bool {
        let live = self.live.load();
        match &self.default_model {
            Some(d) => live.contains_key(d),
            None => !live.is_empty(),
        }
    }

    /// Per-model version states (loading / available / failed with reason).
    pub fn status(&self) -> BTreeMap<String, Vec<VersionStatus>> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .map(|(m, vs)| {
                let mut list: Vec<VersionStatus> = vs
                    .iter()
                    .map(|(v, st)| VersionStatus {
                        version: *v,
                        state: st.clone(),
                    })
                    .collect();
                list.sort_by_key(|s| std::cmp::Reverse(s.version));
                (m.clone(), list)
            })
            .collect()
    }

    fn state(&self, model: &str, version: u64) -> Option<VersionState> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.get(model).and_then(|m| m.get(&version)).cloned()
    }

    fn set_state(&self, model: &str, version: u64, state: VersionState) {
        self.status_mut(|s| {
            s.entry(model.to_string())
                .or_default()
                .insert(version, state);
        });
    }

    fn status_mut(&self, f: impl FnOnce(&mut BTreeMap<String, BTreeMap<u64, VersionState>>)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}
