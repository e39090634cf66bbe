//! A loaded, verified snapshot: the mapped files, the resolved user tower, and the ranking entry point.
//!
//! [`Snapshot::load`] is what every later layer installs: it opens the version directory with full
//! verification (format layer), resolves the tower, and replays the manifest's golden checks through
//! this crate's own tower and scoring code. A snapshot that fails any of it is never served. Once
//! loaded, a snapshot is immutable and shared behind an `Arc`; its memory maps are released when the
//! last `Arc` (the registry's or an in-flight request's) is dropped.
//!
//! With [`LoadOptions::defer_item_verification`] the item files' checksums and contents are not checked
//! by `load`: the snapshot says so ([`Snapshot::deferred_verification`]) and whoever installs it (the
//! registry) must run [`verify_item_files`] afterwards and act on its result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prerank_format::reader::{LoadMode, OpenOptions, SnapshotFiles};
use prerank_format::{Dtype, FormatError, Manifest};
use serde::Serialize;

use crate::api::RankRequest;
use crate::hugepages;
use crate::model::{ModelError, TowerData, TowerLayout, UserInput};
use crate::scoring::{RankStats, Scored, Scratch};

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("golden check {name:?} failed: {reason}")]
    Golden { name: String, reason: String },
    #[error("item dtype {wanted} requested, the snapshot stores {available}")]
    Dtype { wanted: Dtype, available: String },
}

/// How to load a snapshot.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Serve this item dtype (must be stored); `None` serves the manifest's first.
    pub dtype: Option<Dtype>,
    /// Verify checksums and full contents (always on when serving; `inspect` may skip it).
    pub verify: bool,
    /// Ask for transparent huge pages on the item files.
    pub huge_pages: bool,
    /// Replay the manifest's golden checks.
    pub golden: bool,
    /// Memory-map the files or copy them into private memory (`--load-mode`; docs/operations.md).
    pub load_mode: LoadMode,
    /// With `verify`: check the item files (vectors, index, attributes) in a background thread after
    /// the load instead of before it (`--verify deferred`; docs/operations.md). The manifest, the
    /// weights and every file's size and header are still checked before serving.
    pub defer_item_verification: bool,
    /// Fault the served files into memory before the snapshot is returned (`--prefault`).
    pub prefault: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            verify: true,
            huge_pages: true,
            golden: true,
            load_mode: LoadMode::Mmap,
            defer_item_verification: false,
            prefault: false,
        }
    }
}

/// What `GET /v1/models` and the logs say about a loaded snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub model: String,
    pub version: u64,
    pub path: PathBuf,
    pub item_count: u64,
    pub dim: usize,
    /// The dtype being served, and all stored ones.
    pub dtype: Dtype,
    pub dtypes: Vec<Dtype>,
    pub tau: f32,
    pub created_at: String,
    /// Unix seconds when this process finished loading it.
    pub loaded_at: u64,
    pub load_ms: u64,
    pub mapped_bytes: u64,
    pub golden_checks: usize,
    pub provenance: serde_json::Value,
}

/// The outcome of one ranking call.
#[derive(Debug, Clone)]
pub struct RankResult {
    pub items: Vec<Scored>,
    pub stats: RankStats,
    pub ignored_features: Vec<String>,
}

/// A verified, servable snapshot.
#[derive(Debug)]
pub struct Snapshot {
    files: SnapshotFiles,
    layout: TowerLayout,
    /// Index into `files.vectors` of the dtype being served.
    serving: usize,
    info: SnapshotInfo,
    /// Loaded with `--verify deferred`: the item files' checksums and contents are still unchecked.
    deferred: bool,
}

impl Snapshot {
    /// Opens, verifies and golden-checks the version directory `dir`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Snapshot, SnapshotError> {
        let started = Instant::now();
        let files = SnapshotFiles::open(
            dir,
            &OpenOptions {
                verify_checksums: opts.verify,
                verify_contents: opts.verify,
                huge_pages: opts.huge_pages,
                load_mode: opts.load_mode,
                defer_item_files: opts.verify && opts.defer_item_verification,
                prefault: opts.prefault,
                serve_dtype: opts.dtype,
            },
        )?;
        let opened_ms = started.elapsed().as_millis() as u64;
        let layout = TowerLayout::new(&files.manifest, &files.weights)?;
        let serving = match opts.dtype {
            None => 0,
            Some(want) => files
                .vectors
                .iter()
                .position(|v| v.dtype() == want)
                .ok_or_else(|| SnapshotError::Dtype {
                    wanted: want,
                    available: files
                        .vectors
                        .iter()
                        .map(|v| v.dtype().name())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
        let m = &files.manifest;
        let info = SnapshotInfo {
            model: m.model.clone(),
            version: m.version,
            path: dir.to_path_buf(),
            item_count: m.items.count,
            dim: m.items.dim,
            dtype: files.vectors[serving].dtype(),
            dtypes: files.vectors.iter().map(|v| v.dtype()).collect(),
            tau: m.tau,
            created_at: m.created_at.clone(),
            loaded_at: 0,
            load_ms: 0,
            mapped_bytes: files.mapped_bytes(),
            golden_checks: m.golden.len(),
            provenance: m.provenance.clone(),
        };
        let mut snap = Snapshot {
            files,
            layout,
            serving,
            info,
            deferred: opts.verify && opts.defer_item_verification,
        };
        if opts.golden {
            snap.check_golden()?;
        }
        snap.info.load_ms = started.elapsed().as_millis() as u64;
        snap.info.loaded_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        snap.log_memory(opened_ms, opts);
        Ok(snap)
    }

    /// The version directory whose item files still need [`verify_item_files`] (a deferred load), or
    /// `None` when `load` verified everything.
    pub fn deferred_verification(&self) -> Option<&Path> {
        self.deferred.then_some(self.info.path.as_path())
    }

    /// Per mapped file: bytes mapped, resident and backed by huge pages (module [`crate::hugepages`]).
    pub fn memory_usage(&self) -> Vec<hugepages::FileUsage> {
        hugepages::usage(&self.files.maps)
    }

    /// Logs what the kernel granted at load: THP mode, and per file mapped / resident / huge bytes.
    fn log_memory(&self, opened_ms: u64, opts: &LoadOptions) {
        let usage = self.memory_usage();
        let files: Vec<String> = usage
            .iter()
            .map(|u| {
                format!(
                    "{}: mapped {} MiB, resident {} MiB, huge {} MiB",
                    u.file,
                    u.mapped >> 20,
                    u.resident >> 20,
                    u.huge >> 20
                )
            })
            .collect();
        tracing::info!(
            model = %self.info.model,
            version = self.info.version,
            load_mode = %opts.load_mode,
            huge_pages_advised = opts.huge_pages,
            thp = %hugepages::thp_mode(),
            prefault = opts.prefault,
            verify = if !opts.verify { "off" } else if opts.defer_item_verification { "deferred" } else { "full" },
            open_ms = opened_ms,
            load_ms = self.info.load_ms,
            mapped_mib = usage.iter().map(|u| u.mapped).sum::<u64>() >> 20,
            resident_mib = usage.iter().map(|u| u.resident).sum::<u64>() >> 20,
            huge_page_mib = usage.iter().map(|u| u.huge).sum::<u64>() >> 20,
            process_rss_mib = hugepages::process_rss() >> 20,
            files = %files.join("; "),
            "snapshot memory"
        );
    }

    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    pub fn manifest(&self) -> &Manifest {
        &self.files.manifest
    }

    pub fn files(&self) -> &SnapshotFiles {
        &self.files
    }

    pub fn layout(&self) -> &TowerLayout {
        &self.layout
    }

    fn data(&self) -> TowerData<'_, memmap2::Mmap> {
        TowerData {
            weights: &self.files.weights,
            index: &self.files.index,
            attributes: &self.files.attributes,
        }
    }

    /// The user vector for one user (normalised, `dim` long).
    pub fn user_vector(&self, input: &UserInput<'_>) -> Result<Vec<f32>, ModelError> {
        self.layout.forward(self.data(), input)
    }

    /// Ranks `req.candidates` for `req.user`, returning at most `k` items. `dtype` overrides the
    /// served dtype (used by golden checks, which are defined against f32).
    pub fn rank(
        &self,
        req: &RankRequest,
        k: usize,
        scratch: &mut Scratch,
    ) -> Result<RankResult, ModelError> {
        self.rank_with(req, k, scratch, self.serving, true)
    }

    fn rank_with(
        &self,
        req: &RankRequest,
        k: usize,
        scratch: &mut Scratch,
        vectors: usize,
        fast: bool,
    ) -> Result<RankResult, ModelError> {
        let input = UserInput::from_json(&req.user)?;
        let ignored_features = self.layout.ignored_features(&input);
        let u = self.user_vector(&input)?;
        let (items, stats) = crate::parallel::rank(
            &u,
            self.files.manifest.tau,
            &self.files.vectors[vectors],
            &self.files.index,
            &req.candidates,
            k,
            scratch,
            fast,
        );
        Ok(RankResult {
            items,
            stats,
            ignored_features,
        })
    }

    /// Replays every golden check: user vector and top scores within the check's tolerance.
    fn check_golden(&self) -> Result<(), SnapshotError> {
        let mut scratch = Scratch::default();
        for g in &self.files.manifest.golden {
            let fail = |reason: String| SnapshotError::Golden {
                name: g.name.clone(),
                reason,
            };
            let req: RankRequest = serde_json::from_value(g.request.clone())
                .map_err(|e| fail(format!("request does not parse: {e}")))?;
            let input = UserInput::from_json(&req.user).map_err(|e| fail(e.to_string()))?;
            let u = self.user_vector(&input).map_err(|e| fail(e.to_string()))?;
            let (worst, at) = max_abs_diff(&u, &g.user_vector);
            if worst > g.tolerance {
                return Err(fail(format!(
                    "user vector differs by {worst:e} at component {at} (tolerance {:e})",
                    g.tolerance
                )));
            }
            // Top scores are defined against f32 vectors; with only compact dtypes stored, check
            // the scores at that dtype's precision instead.
            let (vectors, tol) = match self
                .files
                .vectors
                .iter()
                .position(|v| v.dtype() == Dtype::F32)
            {
                Some(i) => (i, g.tolerance),
                None => (0, g.tolerance + self.files.manifest.tau * 0.05),
            };
            let k = usize::try_from(req.k).unwrap_or(0).max(g.top.len());
            let got = self
                .rank_with(&req, k, &mut scratch, vectors, false)
                .map_err(|e| fail(e.to_string()))?;
            if got.items.len() < g.top.len() {
                return Err(fail(format!(
                    "expected {} items, got {}",
                    g.top.len(),
                    got.items.len()
                )));
            }
            for (i, want) in g.top.iter().enumerate() {
                let have = got.items[i];
                if (have.score - want.score).abs() > tol {
                    return Err(fail(format!(
                        "rank {i}: score {} for item {}, expected {} for item {} (tolerance {tol:e})",
                        have.score, have.item_id, want.score, want.item_id
                    )));
                }
                // Ids must match unless the expected neighbours tie within the tolerance.
                let tied = g.top.iter().any(|o| {
                    o.item_id != want.item_id && (o.score - want.score).abs() <= 2.0 * tol
                });
                if have.item_id != want.item_id && !tied {
                    return Err(fail(format!(
                        "rank {i}: item {}, expected item {}",
                        have.item_id, want.item_id
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The item-file checks a deferred load skipped ([`prerank_format::reader::verify_files`]: every
/// file's sha256 and contents, through its own read-only map). Blocking and as slow as a full load's
/// verification; the registry runs it on a background thread (module doc of [`crate::registry`]).
pub fn verify_item_files(dir: &Path) -> Result<(), SnapshotError> {
    prerank_format::reader::verify_files(dir).map_err(SnapshotError::from)
}

/// Largest absolute difference between two vectors and where it is (length mismatch counts as inf).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    if a.len() != b.len() {
        return (f32::INFINITY, a.len().min(b.len()));
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0.0, 0),
            |(m, at), (i, d)| if d > m || d.is_nan() { (d, i) } else { (m, at) },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, sample_request, SynthConfig};
    use rand::SeedableRng;

    /// A deferred, prefaulted load serves the same results as a full one; a flipped byte inside a
    /// row passes the deferred load's structural checks but not the full verification that follows.
    #[test]
    fn deferred_and_prefaulted_loads_rank_the_same_and_defer_only_item_checks() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("m/1");
        let cfg = SynthConfig {
            items: 3_000,
            dtypes: vec![Dtype::Int8, Dtype::F32],
            golden: 1,
            ..SynthConfig::default()
        };
        generate(&v, &cfg).unwrap();
        let full = Snapshot::load(&v, &LoadOptions::default()).unwrap();
        let lazy_opts = LoadOptions {
            defer_item_verification: true,
            prefault: true,
            ..LoadOptions::default()
        };
        let lazy = Snapshot::load(&v, &lazy_opts).unwrap();
        assert!(lazy.files().maps.iter().any(|m| m.prefaulted));
        assert_eq!(full.deferred_verification(), None);
        let ids = full.files().index.ids().to_vec();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let req = sample_request(&mut rng, &ids, 2_000, 50);
        let mut s = Scratch::default();
        let a = full.rank(&req, 50, &mut s).unwrap();
        let b = lazy.rank(&req, 50, &mut s).unwrap();
        assert_eq!(a.items, b.items);
        let usage = lazy.memory_usage();
        assert_eq!(usage.len(), lazy.files().maps.len());
        assert!(usage.iter().all(|u| u.huge <= u.mapped));
        drop((full, lazy));

        // Flip one byte of the last int8 row's values (not its header): only the full checks see it.
        let file = v.join("items.int8.vec");
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 192 + 3;
        bytes[at] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        assert!(Snapshot::load(&v, &LoadOptions::default()).is_err());
        let lazy = Snapshot::load(
            &v,
            &LoadOptions {
                defer_item_verification: true,
                golden: false,
                ..LoadOptions::default()
            },
        );
        let lazy = lazy.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lazy.deferred_verification(), Some(v.as_path()));
        assert!(verify_item_files(&v).is_err());
    }
}
