//! The model repository and the registry of live snapshots.
//!
//! The repository is `<root>/<model>/<version>/` (integer versions, TF Serving layout). Each model has a
//! version policy: `latest` (the default: serve the highest version that verifies) or `pinned` to one
//! version (set by the admin API, e.g. by a rollback). Buckets may additionally pin versions of a model
//! that must stay loaded alongside the policy's one ([`Registry::with_bucket_targets`]).
//!
//! Invariants:
//!
//! - Readers (request handlers) take one `Arc<Snapshot>` with a lock-free `ArcSwap` load and keep it for
//!   the whole request, so a response never mixes two versions. The set of live snapshots is one
//!   immutable [`Live`] value replaced with one store; a replaced snapshot's memory maps are released
//!   when its last `Arc` (the registry's or an in-flight request's) drops.
//! - Only complete versions are attempted: a version directory must hold a parseable manifest and every
//!   file it lists with the listed size ([`check_complete`]). An incomplete version (a slow `cp -r` in
//!   progress) is reported as `incomplete` and retried on every scan; it never becomes `failed`. A
//!   complete version that fails verification (checksums, contents, golden checks, name/version
//!   mismatch) is `failed` for good (published versions are immutable) unless an operator explicitly
//!   loads it again; the current version keeps serving.
//! - Loading, verification and warm-up happen on the calling (blocking) thread, never on the request
//!   path; all lifecycle changes are serialised by one lock, so a poll, a watcher event and an admin
//!   call never load the same version twice at once.
//! - A replaced snapshot is parked until no request holds it and then dropped by [`Registry::reap`]
//!   on a lifecycle thread (the discovery loop calls it a few times a second), so the munmap of a
//!   large snapshot never lands on a request's latency.
//! - `--verify deferred` ([`LoadOptions::defer_item_verification`]): a version serves after the
//!   structural checks, and the registry checks its item files on a `prerank-verify` thread of their
//!   own. The thread only reports (a shared queue); the lifecycle side applies the reports under the
//!   lifecycle lock ([`Registry::apply_verifications`], called by the discovery loop next to `reap`
//!   and by [`Registry::reconcile_all`]). A failed check makes the version `failed`, exactly like a
//!   load-time rejection (never retried by scans; an admin load retries it), and takes it out of
//!   service: the policy's best remaining version replaces it in one swap, loaded first if needed, so
//!   requests never see a gap. Under `latest` that is the highest good version; a model pinned to the
//!   failed version is re-pinned to the highest good version below it (what `rollback` picks, never a
//!   newer one); a bucket-pinned failed version stays unloaded (its bucket and readiness fail). When
//!   no good version is left the model is unloaded: wrong scores are worse than a 503. Reports are
//!   matched to the load they verified, so a late report never touches a newer load of the version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use prerank_format::manifest::{valid_model_name, MANIFEST_FILE};
use prerank_format::Manifest;
use serde::Serialize;

use crate::parallel::ScoringPool;
use crate::request::RankRequest;
use crate::snapshot::{verify_item_files, LoadOptions, Snapshot};
use crate::telemetry;

/// Errors of the registry layer (what a request can hit when choosing a model).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("model {0:?} is not loaded")]
    UnknownModel(String),
    #[error("no model is loaded yet")]
    NoModel,
    #[error("several models are loaded ({0}); name one in the request's `model` field")]
    AmbiguousModel(String),
    #[error("version {version} of model {model:?} is not loaded")]
    VersionNotLoaded { model: String, version: u64 },
}

/// Errors of lifecycle operations (admin API, `prerank publish` targets).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LifecycleError {
    #[error("invalid model name {0:?}: expected [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")]
    InvalidModelName(String),
    #[error("invalid version {0:?}: expected a positive integer without leading zeros")]
    InvalidVersion(String),
    #[error("model {0:?} has no directory under the model root")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version} on disk")]
    NoSuchVersion { model: String, version: u64 },
    #[error("version {version} of model {model:?} is incomplete: {reason}")]
    Incomplete {
        model: String,
        version: u64,
        reason: String,
    },
    #[error("version {version} of model {model:?} failed to load: {reason}")]
    LoadFailed {
        model: String,
        version: u64,
        reason: String,
    },
    #[error("model {0:?} has no earlier loadable version to roll back to")]
    NoPreviousVersion(String),
    #[error("cannot read the model repository: {0}")]
    Io(String),
}

/// State of one version of a model, as TF Serving reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    /// On disk, not loaded (never tried, replaced, or unloaded).
    NotLoaded,
    /// Files present but not all of them yet (a copy in progress); retried on every scan.
    Incomplete { reason: String },
    /// Being read, verified and warmed up.
    Loading,
    /// Verified and live.
    Available,
    /// Complete but rejected (checksum, contents, golden checks, manifest/directory mismatch), at
    /// load or by its deferred verification; not served, not retried by scans.
    Failed { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub version: u64,
    #[serde(flatten)]
    pub state: VersionState,
}

/// Which version of a model is served by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum VersionPolicy {
    /// The highest version that verifies.
    Latest,
    /// Exactly this version.
    Pinned { version: u64 },
}

/// One model's live snapshots.
#[derive(Debug, Clone, Default)]
pub struct LiveModel {
    /// The version requests get when they name no version (the policy's); `None` when only
    /// bucket-pinned versions are loaded.
    pub serving: Option<u64>,
    /// Every loaded version: the serving one and any bucket-pinned ones.
    pub versions: BTreeMap<u64, Arc<Snapshot>>,
}

impl LiveModel {
    fn serving_snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.serving.and_then(|v| self.versions.get(&v))
    }
}

/// Every live snapshot: replaced as a whole with one `ArcSwap` store.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub models: BTreeMap<String, LiveModel>,
}

/// Mutable bookkeeping (never read on the request path).
#[derive(Debug, Default)]
struct Book {
    states: BTreeMap<String, BTreeMap<u64, VersionState>>,
    policy: BTreeMap<String, VersionPolicy>,
    /// Models unloaded by an operator: not loaded again until an explicit load.
    unloaded: BTreeSet<String>,
    /// Versions whose deferred verification is running: the id of the load it verifies (a report
    /// about an older load of the same version is stale and ignored).
    verifying: BTreeMap<String, BTreeMap<u64, u64>>,
}

/// What a `prerank-verify` thread reports about one deferred load.
#[derive(Debug)]
struct VerifyReport {
    model: String,
    version: u64,
    /// The load it verified ([`Book::verifying`]).
    load_id: u64,
    /// `Err(reason)`: the item files do not verify.
    result: Result<(), String>,
}

/// What the admin API reports about one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub name: String,
    #[serde(flatten)]
    pub policy: VersionPolicy,
    /// Unloaded by an operator (not served until loaded again).
    pub unloaded: bool,
    /// The version served to requests that name none.
    pub serving: Option<u64>,
    /// Versions kept loaded (serving and bucket-pinned).
    pub loaded: Vec<u64>,
    /// Every version on disk or tried, newest first.
    pub versions: Vec<VersionStatus>,
}

/// The live snapshots, the repository scanner and the lifecycle operations.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    live: ArcSwap<Live>,
    book: Mutex<Book>,
    /// Serialises every load / swap / unload (held on blocking threads only).
    lifecycle: Mutex<()>,
    /// Replaced snapshots waiting for their last request. [`Registry::reap`] drops them on a
    /// lifecycle thread once nothing else holds them, so no request pays for the munmap.
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// Outcomes of deferred verifications, pushed by their threads and applied by
    /// [`Registry::apply_verifications`] on the lifecycle side.
    verify_reports: Arc<Mutex<Vec<VerifyReport>>>,
    /// Source of load ids (deferred verification reports name the load they checked).
    next_load_id: AtomicU64,
    default_model: Option<String>,
    load_options: LoadOptions,
    /// (model, pinned version) each configured bucket needs live; empty without buckets.
    bucket_targets: Vec<(String, Option<u64>)>,
    /// Extra warm-up passes over the golden requests (with every item as candidate) before a swap.
    warmup_rounds: usize,
    /// An optional warm-up request replayed `warmup_rounds` times (instead of the golden requests).
    warmup_request: Option<RankRequest>,
    /// The scoring pool warm-up requests run on (the one requests use).
    scoring: Arc<ScoringPool>,
}

/// Integer version directories of `model_dir`, highest first. Names that are not canonical positive
/// integers (temporary `.tmp-*` directories of an in-progress publish, for instance) are ignored.
/// Symbolic links to directories count (volume mounts and shared corpora are often links).
pub fn scan_versions(model_dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(model_dir)? {
        let entry = entry?;
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = parse_version(name) {
            versions.push(v);
        }
    }
    versions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(versions)
}

/// A canonical positive decimal version (`"3"`, not `"03"`, `"+3"` or `"0"`).
pub fn parse_version(s: &str) -> Option<u64> {
    let v = s.parse::<u64>().ok()?;
    (v > 0 && v.to_string() == s).then_some(v)
}

/// Whether `dir` holds a complete version: a parseable manifest and every listed file with its listed
/// size. Cheap (one read of the manifest, one `stat` per file). `Err` carries the reason it is not
/// complete yet; the caller retries later.
pub fn check_complete(dir: &Path) -> Result<Manifest, String> {
    let text = match std::fs::read_to_string(dir.join(MANIFEST_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{MANIFEST_FILE} is missing"))
        }
        Err(e) => return Err(format!("{MANIFEST_FILE}: {e}")),
    };
    let manifest = Manifest::from_json(&text).map_err(|e| e.to_string())?;
    for (name, entry) in &manifest.files {
        match std::fs::metadata(dir.join(name)) {
            Ok(m) if m.len() == entry.bytes => {}
            Ok(m) => {
                return Err(format!(
                    "{name}: {} of {} bytes present",
                    m.len(),
                    entry.bytes
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{name} is missing"))
            }
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok(manifest)
}

/// Why one version did not load.
enum Attempt {
    Incomplete(String),
    Failed(String),
}

impl Registry {
    pub fn new(root: &Path, default_model: Option<String>, load_options: LoadOptions) -> Registry {
        Registry {
            root: root.to_path_buf(),
            live: ArcSwap::from_pointee(Live::default()),
            book: Mutex::new(Book::default()),
            lifecycle: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            verify_reports: Arc::new(Mutex::new(Vec::new())),
            next_load_id: AtomicU64::new(1),
            default_model,
            load_options,
            bucket_targets: Vec::new(),
            warmup_rounds: 1,
            warmup_request: None,
            scoring: Arc::new(ScoringPool::sequential()),
        }
    }

    /// Warm-up scores on `pool` (the requests' pool, so warm-up splits as requests do).
    pub fn with_scoring(mut self, pool: Arc<ScoringPool>) -> Registry {
        self.scoring = pool;
        self
    }

    /// The (model, optional pinned version) of every configured bucket: pinned versions are kept
    /// loaded, and readiness requires all of them live.
    pub fn with_bucket_targets(mut self, targets: Vec<(String, Option<u64>)>) -> Registry {
        self.bucket_targets = targets;
        self
    }

    /// Warm-up before a swap: `rounds` passes of `request` (or of the golden requests, scoring every
    /// item, when `None`).
    pub fn with_warmup(mut self, rounds: usize, request: Option<RankRequest>) -> Registry {
        self.warmup_rounds = rounds;
        self.warmup_request = request;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Model directories under the root (valid names only; links to directories count).
    pub fn model_names(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.path().is_dir() {
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

    // ---- request path -------------------------------------------------------------------------

    /// The snapshot a request should use: the named model, or the default one, at its serving version.
    /// Lock-free and allocation-free on success (the request path).
    pub fn get(&self, model: Option<&str>) -> Result<Arc<Snapshot>, RegistryError> {
        let live = self.live.load();
        let name = match (model, &self.default_model) {
            (Some(m), _) => m,
            (None, Some(d)) => d.as_str(),
            (None, None) => {
                let mut serving = live.models.values().filter_map(LiveModel::serving_snapshot);
                return match (serving.next(), serving.next()) {
                    (Some(only), None) => Ok(Arc::clone(only)),
                    (None, _) => Err(RegistryError::NoModel),
                    (Some(_), Some(_)) => Err(RegistryError::AmbiguousModel(
                        live.models
                            .iter()
                            .filter(|(_, m)| m.serving_snapshot().is_some())
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )),
                };
            }
        };
        match live.models.get(name).and_then(LiveModel::serving_snapshot) {
            Some(s) => Ok(Arc::clone(s)),
            None if live.models.values().all(|m| m.serving.is_none()) => {
                Err(RegistryError::NoModel)
            }
            None => Err(RegistryError::UnknownModel(name.to_string())),
        }
    }

    /// The snapshot of `model` at `version` (a bucket's pinned version), or at its serving version.
    pub fn get_version(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Arc<Snapshot>, RegistryError> {
        let Some(version) = version else {
            return self.get(Some(model));
        };
        let live = self.live.load();
        live.models
            .get(model)
            .and_then(|m| m.versions.get(&version))
            .cloned()
            .ok_or_else(|| RegistryError::VersionNotLoaded {
                model: model.to_string(),
                version,
            })
    }

    /// The serving snapshot of every model.
    pub fn live(&self) -> Vec<Arc<Snapshot>> {
        self.live
            .load()
            .models
            .values()
            .filter_map(|m| m.serving_snapshot().cloned())
            .collect()
    }

    /// The whole live set (one consistent view).
    pub fn live_set(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub fn live_version(&self, model: &str) -> Option<u64> {
        self.live.load().models.get(model).and_then(|m| m.serving)
    }

    /// Ready when every configured bucket's model (and pinned version) is live; without buckets, when
    /// at least one model is live (and the default model, if one is configured).
    pub fn is_ready(&self) -> bool {
        if !self.bucket_targets.is_empty() {
            return self
                .bucket_targets
                .iter()
                .all(|(m, v)| self.get_version(m, *v).is_ok());
        }
        match &self.default_model {
            Some(d) => self.live_version(d).is_some(),
            None => !self.live().is_empty(),
        }
    }

    // ---- status -------------------------------------------------------------------------------

    /// Per-model version states (not_loaded / incomplete / loading / available / failed).
    pub fn status(&self) -> BTreeMap<String, Vec<VersionStatus>> {
        let book = self.book();
        book.states
            .iter()
            .map(|(m, vs)| (m.clone(), version_list(vs)))
            .collect()
    }

    /// The policy of `model`.
    pub fn policy(&self, model: &str) -> VersionPolicy {
        self.book()
            .policy
            .get(model)
            .copied()
            .unwrap_or(VersionPolicy::Latest)
    }

    /// Everything the admin API says about every model (on disk, tried or live).
    pub fn report(&self) -> Vec<ModelReport> {
        let mut names: BTreeSet<String> =
            self.model_names().unwrap_or_default().into_iter().collect();
        names.extend(self.live.load().models.keys().cloned());
        names.extend(self.book().states.keys().cloned());
        names.iter().map(|n| self.report_model(n)).collect()
    }

    /// The admin report of one model.
    pub fn report_model(&self, model: &str) -> ModelReport {
        let live = self.live.load();
        let lm = live.models.get(model);
        let on_disk = scan_versions(&self.root.join(model)).unwrap_or_default();
        let book = self.book();
        let mut states = book.states.get(model).cloned().unwrap_or_default();
        for v in on_disk {
            states.entry(v).or_insert(VersionState::NotLoaded);
        }
        ModelReport {
            name: model.to_string(),
            policy: book
                .policy
                .get(model)
                .copied()
                .unwrap_or(VersionPolicy::Latest),
            unloaded: book.unloaded.contains(model),
            serving: lm.and_then(|m| m.serving),
            loaded: lm
                .map(|m| m.versions.keys().rev().copied().collect())
                .unwrap_or_default(),
            versions: version_list(&states),
        }
    }

    // ---- lifecycle ----------------------------------------------------------------------------

    /// Scans the whole repository and brings every model to its policy (blocking: call from a
    /// blocking thread). Applies pending deferred-verification reports first.
    pub fn reconcile_all(&self) {
        self.apply_verifications();
        let mut names: BTreeSet<String> = match self.model_names() {
            Ok(n) => {
                if n.is_empty() {
                    tracing::warn!(root = %self.root.display(), "no model directories under the model root");
                }
                n.into_iter().collect()
            }
            Err(e) => {
                tracing::error!(root = %self.root.display(), error = %e, "cannot read the model root");
                BTreeSet::new()
            }
        };
        names.extend(self.bucket_targets.iter().map(|(m, _)| m.clone()));
        names.extend(self.live.load().models.keys().cloned());
        for name in names {
            self.reconcile(&name);
        }
    }

    /// Compatibility name of [`Registry::reconcile`]: returns the version now served.
    pub fn load_latest(&self, model: &str) -> Option<u64> {
        self.reconcile(model);
        self.live_version(model)
    }

    /// Brings one model to its policy: loads what is missing, swaps, unloads what is no longer needed.
    pub fn reconcile(&self, model: &str) {
        let _guard = self.lock_lifecycle();
        self.reconcile_locked(model);
    }

    /// Pins `model` to `version` (loading and verifying it first). On failure the policy and the
    /// serving version are unchanged.
    pub fn pin(&self, model: &str, version: u64) -> Result<ModelReport, LifecycleError> {
        self.check_model(model)?;
        let _guard = self.lock_lifecycle();
        self.book().unloaded.remove(model);
        self.require_loaded(model, version, true)?;
        self.book()
            .policy
            .insert(model.to_string(), VersionPolicy::Pinned { version });
        tracing::info!(model, version, "model pinned");
        self.reconcile_locked(model);
        Ok(self.report_model(model))
    }

    /// Returns `model` to the `latest` policy.
    pub fn unpin(&self, model: &str) -> Result<ModelReport, LifecycleError> {
        self.check_model(model)?;
        let _guard = self.lock_lifecycle();
        self.book().policy.remove(model);
        self.book().unloaded.remove(model);
        tracing::info!(model, "model unpinned (policy: latest)");
        self.reconcile_locked(model);
        Ok(self.report_model(model))
    }

    /// Loads `model`: at `version` (pinning it, like an explicit Triton load of one version), or under
    /// its policy when `None`. Clears an earlier unload.
    pub fn load(&self, model: &str, version: Option<u64>) -> Result<ModelReport, LifecycleError> {
        match version {
            Some(v) => self.pin(model, v),
            None => {
                self.check_model(model)?;
                let _guard = self.lock_lifecycle();
                self.book().unloaded.remove(model);
                self.reconcile_locked(model);
                Ok(self.report_model(model))
            }
        }
    }

    /// Unloads `model` entirely: requests naming it get `model_not_found` until it is loaded again.
    pub fn unload(&self, model: &str) -> Result<ModelReport, LifecycleError> {
        self.check_model(model)?;
        let _guard = self.lock_lifecycle();
        self.book().unloaded.insert(model.to_string());
        tracing::warn!(model, "model unloaded by operator");
        self.reconcile_locked(model);
        Ok(self.report_model(model))
    }

    /// Pins `model` to the highest loadable version below the one it serves now (failed versions are
    /// skipped). Repeated rollbacks walk further back; `unpin` returns to `latest`.
    pub fn rollback(&self, model: &str) -> Result<ModelReport, LifecycleError> {
        self.check_model(model)?;
        let _guard = self.lock_lifecycle();
        let current = self
            .live_version(model)
            .ok_or_else(|| LifecycleError::NoPreviousVersion(model.to_string()))?;
        let candidates: Vec<u64> = scan_versions(&self.root.join(model))
            .unwrap_or_default()
            .into_iter()
            .filter(|v| *v < current)
            .collect();
        for v in candidates {
            if matches!(self.state(model, v), Some(VersionState::Failed { .. })) {
                continue;
            }
            if self.require_loaded(model, v, false).is_ok() {
                self.book()
                    .policy
                    .insert(model.to_string(), VersionPolicy::Pinned { version: v });
                tracing::warn!(model, from = current, to = v, "rolled back (model pinned)");
                self.reconcile_locked(model);
                return Ok(self.report_model(model));
            }
        }
        Err(LifecycleError::NoPreviousVersion(model.to_string()))
    }

    /// Installs a verified snapshot as its model's serving version (one atomic store). For embedding
    /// and tests; the repository scan does this itself.
    pub fn install(&self, snap: Snapshot) {
        let _guard = self.lock_lifecycle();
        let model = snap.info().model.clone();
        let version = snap.info().version;
        if let Some(dir) = snap.deferred_verification() {
            if let Err(reason) = self.start_deferred_verification(&model, version, dir) {
                tracing::error!(model, version, %reason, "snapshot rejected; the current version keeps serving");
                self.set_state(&model, version, VersionState::Failed { reason });
                return;
            }
        }
        let mut next = Live::clone(&self.live.load());
        let lm = next.models.entry(model.clone()).or_default();
        let old = lm.serving.replace(version);
        lm.versions.insert(version, Arc::new(snap));
        let outgoing = old
            .filter(|o| *o != version)
            .and_then(|o| lm.versions.remove(&o));
        if let Some(o) = old.filter(|o| *o != version) {
            self.set_state(&model, o, VersionState::NotLoaded);
        }
        self.live.store(Arc::new(next));
        self.retire(outgoing.into_iter().collect());
        self.set_state(&model, version, VersionState::Available);
        self.note_serving(&model, Some(version));
    }

    fn check_model(&self, model: &str) -> Result<(), LifecycleError> {
        if !valid_model_name(model) {
            return Err(LifecycleError::InvalidModelName(model.to_string()));
        }
        if !self.root.join(model).is_dir() && !self.live.load().models.contains_key(model) {
            return Err(LifecycleError::UnknownModel(model.to_string()));
        }
        Ok(())
    }

    /// Makes sure `version` is loaded (keeping the result for the next reconcile). `retry_failed`
    /// retries a version that failed before (an explicit operator request).
    fn require_loaded(
        &self,
        model: &str,
        version: u64,
        retry_failed: bool,
    ) -> Result<(), LifecycleError> {
        if self
            .live
            .load()
            .models
            .get(model)
            .is_some_and(|m| m.versions.contains_key(&version))
        {
            return Ok(());
        }
        if !self.root.join(model).join(version.to_string()).is_dir() {
            return Err(LifecycleError::NoSuchVersion {
                model: model.to_string(),
                version,
            });
        }
        if !retry_failed {
            if let Some(VersionState::Failed { reason }) = self.state(model, version) {
                return Err(LifecycleError::LoadFailed {
                    model: model.to_string(),
                    version,
                    reason,
                });
            }
        }
        match self.attempt(model, version) {
            Ok(snap) => {
                // Keep it loaded (not serving yet); the caller's policy change + reconcile decides.
                let mut next = Live::clone(&self.live.load());
                next.models
                    .entry(model.to_string())
                    .or_default()
                    .versions
                    .insert(version, snap);
                self.live.store(Arc::new(next));
                Ok(())
            }
            Err(Attempt::Incomplete(reason)) => Err(LifecycleError::Incomplete {
                model: model.to_string(),
                version,
                reason,
            }),
            Err(Attempt::Failed(reason)) => Err(LifecycleError::LoadFailed {
                model: model.to_string(),
                version,
                reason,
            }),
        }
    }

    fn reconcile_locked(&self, model: &str) {
        let dir = self.root.join(model);
        let on_disk = match scan_versions(&dir) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(model, error = %e, "cannot list model directory");
                return;
            }
        };
        let current = self
            .live
            .load()
            .models
            .get(model)
            .cloned()
            .unwrap_or_default();
        let mut loaded = current.versions.clone();
        let (policy, unloaded) = {
            let book = self.book();
            (
                book.policy
                    .get(model)
                    .copied()
                    .unwrap_or(VersionPolicy::Latest),
                book.unloaded.contains(model),
            )
        };
        // Forget states of versions that left the disk (bounded bookkeeping), except loaded ones.
        {
            let mut book = self.book();
            if let Some(m) = book.states.get_mut(model) {
                m.retain(|v, _| on_disk.contains(v) || loaded.contains_key(v));
            }
            if let Some(m) = book.verifying.get_mut(model) {
                m.retain(|v, _| on_disk.contains(v) || loaded.contains_key(v));
            }
        }
        // A loaded version is `failed` only when its deferred verification failed: out of service
        // (it stays live until this pass has installed its replacement, in the one store below).
        loaded.retain(|v, _| !matches!(self.state(model, *v), Some(VersionState::Failed { .. })));

        let mut want: BTreeSet<u64> = BTreeSet::new();
        let mut serving = None;
        if !unloaded {
            serving = match policy {
                VersionPolicy::Latest => {
                    let mut chosen = None;
                    for &v in &on_disk {
                        if loaded.contains_key(&v) {
                            chosen = Some(v);
                            break;
                        }
                        if matches!(self.state(model, v), Some(VersionState::Failed { .. })) {
                            continue;
                        }
                        if let Ok(snap) = self.attempt(model, v) {
                            loaded.insert(v, snap);
                            chosen = Some(v);
                            break;
                        }
                    }
                    // Nothing loadable on disk (e.g. the directory was removed): keep serving,
                    // unless the serving version itself just failed.
                    chosen.or(current.serving.filter(|v| loaded.contains_key(v)))
                }
                VersionPolicy::Pinned { version } => {
                    if !loaded.contains_key(&version)
                        && !matches!(
                            self.state(model, version),
                            Some(VersionState::Failed { .. })
                        )
                    {
                        if let Ok(snap) = self.attempt(model, version) {
                            loaded.insert(version, snap);
                        }
                    }
                    if loaded.contains_key(&version) {
                        Some(version)
                    } else {
                        current.serving.filter(|v| loaded.contains_key(v))
                    }
                }
            };
            want.extend(serving);
            for (m, v) in &self.bucket_targets {
                let Some(v) = v.filter(|_| m == model) else {
                    continue;
                };
                if !loaded.contains_key(&v)
                    && on_disk.contains(&v)
                    && !matches!(self.state(model, v), Some(VersionState::Failed { .. }))
                {
                    if let Ok(snap) = self.attempt(model, v) {
                        loaded.insert(v, snap);
                    }
                }
                if loaded.contains_key(&v) {
                    want.insert(v);
                }
            }
        }
        loaded.retain(|v, _| want.contains(v));

        let before: Vec<u64> = current.versions.keys().copied().collect();
        let after: Vec<u64> = loaded.keys().copied().collect();
        let live_now: Vec<u64> = self
            .live
            .load()
            .models
            .get(model)
            .map(|m| m.versions.keys().copied().collect())
            .unwrap_or_default();
        if before == after && current.serving == serving && live_now == before {
            return;
        }
        let outgoing: Vec<Arc<Snapshot>> = self
            .live
            .load()
            .models
            .get(model)
            .map(|m| {
                m.versions
                    .iter()
                    .filter(|(v, _)| !after.contains(v))
                    .map(|(_, s)| Arc::clone(s))
                    .collect()
            })
            .unwrap_or_default();
        let mut next = Live::clone(&self.live.load());
        if loaded.is_empty() {
            next.models.remove(model);
        } else {
            next.models.insert(
                model.to_string(),
                LiveModel {
                    serving,
                    versions: loaded,
                },
            );
        }
        self.live.store(Arc::new(next));
        self.retire(outgoing);
        for v in live_now.iter().filter(|v| !after.contains(v)) {
            if !matches!(self.state(model, *v), Some(VersionState::Failed { .. })) {
                self.set_state(model, *v, VersionState::NotLoaded);
            }
        }
        for v in &after {
            self.set_state(model, *v, VersionState::Available);
        }
        if current.serving != serving {
            tracing::info!(model, from = ?current.serving, to = ?serving, "serving version swapped");
        }
        if serving.is_none() && current.serving.is_some() && !unloaded {
            tracing::error!(model, "no good version left: the model is not served");
        }
        self.note_serving(model, serving);
    }

    fn retire(&self, outgoing: Vec<Arc<Snapshot>>) {
        if !outgoing.is_empty() {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(outgoing);
            self.reap();
        }
    }

    /// Drops (and so unmaps) every replaced snapshot no request holds any more; returns how many are
    /// still held. Blocking (munmap): call from a lifecycle thread, never from a request.
    pub fn reap(&self) -> usize {
        let done: Vec<Arc<Snapshot>> = {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let (done, held): (Vec<_>, Vec<_>) =
                retired.drain(..).partition(|s| Arc::strong_count(s) == 1);
            *retired = held;
            done
        };
        for s in done {
            tracing::info!(model = %s.info().model, version = s.info().version, "replaced snapshot released");
            drop(s);
        }
        self.retired_count()
    }

    /// Replaced snapshots still held by in-flight requests.
    pub fn retired_count(&self) -> usize {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Deferred-verification reports waiting for [`Registry::apply_verifications`] (cheap: the
    /// discovery loop asks a few times a second).
    pub fn verification_reports_pending(&self) -> bool {
        !self.reports().is_empty()
    }

    /// Applies the outcome of every finished deferred verification (blocking: a failure may load the
    /// replacement version; call from a lifecycle thread, never from a request). Returns how many
    /// reports were applied.
    pub fn apply_verifications(&self) -> usize {
        if !self.verification_reports_pending() {
            return 0;
        }
        let _guard = self.lock_lifecycle();
        // Taken under the lifecycle lock: a report is never applied before the load it names has
        // finished registering itself.
        let reports = std::mem::take(&mut *self.reports());
        let n = reports.len();
        for r in reports {
            self.apply_report_locked(r);
        }
        n
    }

    fn apply_report_locked(&self, r: VerifyReport) {
        let VerifyReport {
            model,
            version,
            load_id,
            result,
        } = r;
        let current = {
            let mut book = self.book();
            let pending = book.verifying.get_mut(&model);
            let current = pending.as_ref().and_then(|m| m.get(&version)).copied();
            if current == Some(load_id) {
                if let Some(m) = pending {
                    m.remove(&version);
                }
            }
            current
        };
        if current != Some(load_id) {
            tracing::info!(model, version, load_id, "stale deferred verification report ignored (the version was loaded again or left the disk)");
            return;
        }
        let Err(reason) = result else {
            return;
        };
        let reason = format!("deferred verification of the item files failed: {reason}");
        tracing::error!(model, version, %reason, "version failed its deferred verification; taking it out of service");
        metrics::counter!(telemetry::MODEL_LOAD_FAILURES_TOTAL, "model" => model.clone())
            .increment(1);
        self.set_state(&model, version, VersionState::Failed { reason });
        if self.policy(&model) == (VersionPolicy::Pinned { version }) {
            // Pinned to the failed version: re-pin to what `rollback` would pick (the highest good
            // version below it), never to a newer one the operator may have rolled back from.
            let below: Vec<u64> = scan_versions(&self.root.join(&model))
                .unwrap_or_default()
                .into_iter()
                .filter(|v| *v < version)
                .collect();
            let fallback = below.into_iter().find(|&v| {
                !matches!(self.state(&model, v), Some(VersionState::Failed { .. }))
                    && self.require_loaded(&model, v, false).is_ok()
            });
            match fallback {
                Some(v) => {
                    self.book()
                        .policy
                        .insert(model.clone(), VersionPolicy::Pinned { version: v });
                    tracing::warn!(model, from = version, to = v, "pinned version failed its deferred verification: rolled back (model pinned)");
                }
                None => {
                    tracing::error!(model, version, "pinned version failed its deferred verification and no good version below it is left: the model is not served until an operator pins, unpins or loads one");
                }
            }
        }
        self.reconcile_locked(&model);
    }

    /// Registers a deferred load of `model`/`version` and starts checking its item files on a
    /// `prerank-verify` thread, which reports to [`Registry::apply_verifications`]. When no thread can
    /// be started the check runs here, before the version can serve (`Err`: the files do not verify).
    fn start_deferred_verification(
        &self,
        model: &str,
        version: u64,
        dir: &Path,
    ) -> Result<(), String> {
        let load_id = self.next_load_id.fetch_add(1, Ordering::Relaxed);
        self.book()
            .verifying
            .entry(model.to_string())
            .or_default()
            .insert(version, load_id);
        let (m, d, reports) = (
            model.to_string(),
            dir.to_path_buf(),
            Arc::clone(&self.verify_reports),
        );
        let spawned = std::thread::Builder::new()
            .name("prerank-verify".into())
            .spawn(move || {
                let started = Instant::now();
                let result = verify_item_files(&d).map_err(|e| e.to_string());
                let took_ms = started.elapsed().as_millis() as u64;
                telemetry::record_deferred_verify(&m, result.is_ok());
                match &result {
                    Ok(()) => {
                        tracing::info!(model = %m, version, dir = %d.display(), took_ms, "deferred verification of the item files passed");
                    }
                    Err(reason) => {
                        tracing::error!(model = %m, version, dir = %d.display(), %reason, took_ms, "deferred verification of the item files FAILED: the version will be taken out of service");
                    }
                }
                reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(VerifyReport {
                        model: m,
                        version,
                        load_id,
                        result,
                    });
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(model, version, error = %e, "cannot start the deferred verification thread; verifying before the version serves");
                if let Some(m) = self.book().verifying.get_mut(model) {
                    m.remove(&version);
                }
                let result = verify_item_files(dir).map_err(|e| e.to_string());
                telemetry::record_deferred_verify(model, result.is_ok());
                result
            }
        }
    }

    fn reports(&self) -> MutexGuard<'_, Vec<VerifyReport>> {
        self.verify_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Checks completeness, then loads, verifies and warms one version up (not installed).
    fn attempt(&self, model: &str, version: u64) -> Result<Arc<Snapshot>, Attempt> {
        let dir = self.root.join(model).join(version.to_string());
        if let Err(reason) = check_complete(&dir) {
            let changed = self.state(model, version)
                != Some(VersionState::Incomplete {
                    reason: reason.clone(),
                });
            if changed {
                tracing::info!(model, version, %reason, "version directory incomplete; will retry");
                self.set_state(
                    model,
                    version,
                    VersionState::Incomplete {
                        reason: reason.clone(),
                    },
                );
            }
            return Err(Attempt::Incomplete(reason));
        }
        self.set_state(model, version, VersionState::Loading);
        metrics::counter!(telemetry::MODEL_LOAD_ATTEMPTS_TOTAL, "model" => model.to_string())
            .increment(1);
        let started = Instant::now();
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
                self.warm_up(&snap)?;
                Ok(snap)
            });
        metrics::histogram!(telemetry::MODEL_LOAD_DURATION_SECONDS, "model" => model.to_string())
            .record(started.elapsed().as_secs_f64());
        let result = result.and_then(|snap| match snap.deferred_verification() {
            Some(dir) => self
                .start_deferred_verification(model, version, dir)
                .map(|()| snap),
            None => Ok(snap),
        });
        match result {
            Ok(snap) => {
                tracing::info!(
                    model,
                    version,
                    items = snap.info().item_count,
                    dtype = %snap.info().dtype,
                    load_ms = snap.info().load_ms,
                    total_ms = started.elapsed().as_millis() as u64,
                    "snapshot loaded and verified"
                );
                Ok(Arc::new(snap))
            }
            Err(reason) => {
                tracing::error!(model, version, %reason, "snapshot rejected; the current version keeps serving");
                metrics::counter!(telemetry::MODEL_LOAD_FAILURES_TOTAL, "model" => model.to_string())
                    .increment(1);
                self.set_state(
                    model,
                    version,
                    VersionState::Failed {
                        reason: reason.clone(),
                    },
                );
                Err(Attempt::Failed(reason))
            }
        }
    }

    /// Runs the warm-up requests through the snapshot ([`Snapshot::warm_up`]) before it can be
    /// installed.
    fn warm_up(&self, snap: &Snapshot) -> Result<(), String> {
        snap.warm_up(
            self.warmup_rounds,
            self.warmup_request.as_ref(),
            &self.scoring,
        )
        .map_err(|e| format!("warm-up request failed: {e}"))
    }

    fn note_serving(&self, model: &str, serving: Option<u64>) {
        match serving {
            Some(v) => {
                metrics::gauge!(telemetry::MODEL_LIVE_VERSION, "model" => model.to_string())
                    .set(v as f64);
            }
            None => {
                metrics::gauge!(telemetry::MODEL_LIVE_VERSION, "model" => model.to_string())
                    .set(0.0);
            }
        }
    }

    fn lock_lifecycle(&self) -> MutexGuard<'_, ()> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self, model: &str, version: u64) -> Option<VersionState> {
        self.book()
            .states
            .get(model)
            .and_then(|m| m.get(&version))
            .cloned()
    }

    fn set_state(&self, model: &str, version: u64, state: VersionState) {
        self.status_mut(|s| {
            s.entry(model.to_string())
                .or_default()
                .insert(version, state);
        });
    }

    fn status_mut(&self, f: impl FnOnce(&mut BTreeMap<String, BTreeMap<u64, VersionState>>)) {
        f(&mut self.book().states);
    }
}

fn version_list(vs: &BTreeMap<u64, VersionState>) -> Vec<VersionStatus> {
    vs.iter()
        .rev()
        .map(|(v, st)| VersionStatus {
            version: *v,
            state: st.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, SynthConfig};
    use prerank_format::Dtype;
    use std::time::Duration;

    fn synth(root: &Path, model: &str, version: u64) -> PathBuf {
        let dir = root.join(model).join(version.to_string());
        generate(
            &dir,
            &SynthConfig {
                model: model.into(),
                version,
                items: 300,
                seed: 40 + version,
                dtypes: vec![Dtype::F32],
                golden: 1,
                categories: 10,
                tower_widths: [64, 48, 32],
            },
        )
        .unwrap();
        dir
    }

    /// Version and model directories reached through symbolic links are served (shared corpora and
    /// volume mounts are often links); other entries and non-canonical names are not versions.
    #[cfg(unix)]
    #[test]
    fn linked_model_and_version_directories_are_served() {
        let store = tempfile::tempdir().unwrap();
        let real = synth(store.path(), "linked", 3);
        let root = tempfile::tempdir().unwrap();
        let model_dir = store.path().join("elsewhere");
        std::fs::create_dir_all(&model_dir).unwrap();
        std::os::unix::fs::symlink(&real, model_dir.join("3")).unwrap();
        std::os::unix::fs::symlink(&model_dir, root.path().join("linked")).unwrap();
        std::fs::write(model_dir.join("4"), b"a file, not a version").unwrap();
        std::fs::create_dir(model_dir.join("05")).unwrap();
        assert_eq!(scan_versions(&model_dir).unwrap(), vec![3]);
        let registry = Registry::new(root.path(), None, LoadOptions::default());
        assert_eq!(registry.model_names().unwrap(), vec!["linked".to_string()]);
        registry.reconcile_all();
        assert_eq!(registry.live_version("linked"), Some(3));
    }

    /// Flips the lowest mantissa bit of the last row's first f32: the header, sizes, norms and golden
    /// checks still pass; only the sha256 of `items.f32.vec` (a deferred check) does not.
    fn flip_inside_a_row(dir: &Path) {
        let file = dir.join("items.f32.vec");
        let mut b = std::fs::read(&file).unwrap();
        let count = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        let stride = u32::from_le_bytes(b[28..32].try_into().unwrap()) as usize;
        let data = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        b[data + (count - 1) * stride] ^= 0x01;
        std::fs::write(&file, b).unwrap();
    }

    fn deferred(root: &Path) -> Registry {
        Registry::new(
            root,
            None,
            LoadOptions {
                defer_item_verification: true,
                huge_pages: false,
                ..LoadOptions::default()
            },
        )
    }

    /// Waits for the `prerank-verify` threads to report, then applies the reports.
    fn settle(r: &Registry) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while r.book().verifying.values().any(|m| !m.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "deferred verification never reported"
            );
            std::thread::sleep(Duration::from_millis(10));
            r.apply_verifications();
        }
    }

    fn failed_reason(r: &Registry, model: &str, version: u64) -> Option<String> {
        match r.state(model, version) {
            Some(VersionState::Failed { reason }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_version_failing_deferred_verification_is_failed_and_replaced() {
        let root = tempfile::tempdir().unwrap();
        synth(root.path(), "m", 1);
        let r = deferred(root.path());
        r.reconcile_all();
        settle(&r);
        assert_eq!(r.live_version("m"), Some(1));
        assert_eq!(r.state("m", 1), Some(VersionState::Available));

        // Latest: v2 serves after the structural checks, then fails; v1 is loaded again.
        flip_inside_a_row(&synth(root.path(), "m", 2));
        r.reconcile_all();
        assert_eq!(
            r.live_version("m"),
            Some(2),
            "v2 did not pass the structural checks"
        );
        settle(&r);
        let reason = failed_reason(&r, "m", 2).expect("v2 is not failed");
        assert!(reason.contains("items.f32.vec"), "{reason}");
        assert_eq!(r.live_version("m"), Some(1));
        assert_eq!(r.get(None).unwrap().info().version, 1);
        assert_eq!(r.report_model("m").loaded, vec![1]);
        // Not retried by scans.
        r.reconcile_all();
        assert_eq!(r.live_version("m"), Some(1));
        assert!(failed_reason(&r, "m", 2).is_some());

        // An explicit load retries it (and pins it); when it fails again the pin moves down to v1.
        let report = r.load("m", Some(2)).unwrap();
        assert_eq!(report.serving, Some(2));
        settle(&r);
        assert!(failed_reason(&r, "m", 2).is_some());
        assert_eq!(r.policy("m"), VersionPolicy::Pinned { version: 1 });
        assert_eq!(r.live_version("m"), Some(1));

        // A stale report (of a load the registry no longer waits for) changes nothing.
        r.reports().push(VerifyReport {
            model: "m".into(),
            version: 1,
            load_id: 0,
            result: Err("stale".into()),
        });
        assert_eq!(r.apply_verifications(), 1);
        assert_eq!(r.state("m", 1), Some(VersionState::Available));
        assert_eq!(r.live_version("m"), Some(1));
    }

    #[test]
    fn with_no_good_version_left_the_model_is_not_served() {
        let root = tempfile::tempdir().unwrap();
        flip_inside_a_row(&synth(root.path(), "only", 1));
        let r = deferred(root.path());
        r.reconcile_all();
        settle(&r);
        assert!(failed_reason(&r, "only", 1).is_some());
        assert_eq!(r.live_version("only"), None);
        assert!(!r.is_ready());
        assert_eq!(r.get(None).unwrap_err(), RegistryError::NoModel);
        r.reconcile_all();
        assert_eq!(r.live_version("only"), None);
    }
}
