//! A loaded, verified snapshot: the mapped files, the resolved user tower, and the one ranking
//! pipeline ([`Snapshot::rank`]).
//!
//! [`Snapshot::load`] is what every later layer installs: it opens the version directory with full
//! verification (format layer, [`Snapshot::open`] here), resolves the tower, and replays the manifest's
//! golden checks through this crate's own tower and scoring code (in [`crate::golden`]: golden
//! requests are API JSON bodies, decoded by the JSON adapter, so that module and not this one knows
//! the wire). A snapshot that fails any of it is never served. Once loaded, a snapshot is immutable and
//! shared behind an `Arc`; its memory maps are released when the last `Arc` (the registry's or an
//! in-flight request's) is dropped.
//!
//! [`Snapshot::rank`] is the only way a request is ranked: user tower, then scoring on the injected
//! [`ScoringPool`], returning the result with the time each stage took ([`StageTimings`]), so no
//! caller re-implements the steps to time them. [`Snapshot::warm_up`] replays requests through the
//! same pipeline before a version goes live.
//!
//! With [`LoadOptions::defer_item_verification`] the item files' checksums and contents are not checked
//! by `load`: the snapshot says so ([`Snapshot::deferred_verification`]) and whoever installs it (the
//! registry) must run [`verify_item_files`] afterwards and act on its result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memmap2::Mmap;
use prerank_format::reader::{LoadMode, OpenOptions, SnapshotFiles};
use prerank_format::{Dtype, FormatError, Manifest};
use serde::Serialize;

use crate::hugepages;
use crate::model::{ModelError, TowerData, TowerLayout, UserInput};
use crate::parallel::ScoringPool;
use crate::request::RankRequest;
use crate::scoring::{ItemStore, Kernel, Query, RankStats, Scored, Scratch};

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

/// Time spent in each stage of one [`Snapshot::rank`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Request values to features, and the user-tower forward pass.
    pub tower: Duration,
    /// Id lookup, dot products and top-k (split across the scoring pool or not).
    pub scoring: Duration,
}

/// The outcome of one ranking call.
#[derive(Debug, Clone)]
pub struct RankResult {
    pub items: Vec<Scored>,
    pub stats: RankStats,
    pub ignored_features: Vec<String>,
    pub timings: StageTimings,
}

/// Which stored rows and which arithmetic a ranking call uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// Index into the snapshot's vector files.
    pub(crate) vectors: usize,
    pub(crate) kernel: Kernel,
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
    /// The manifest's golden requests (those that decode), replayed over every item by the default
    /// warm-up.
    samples: Vec<RankRequest>,
}

impl Snapshot {
    /// Opens and verifies the version directory `dir` and resolves its tower: everything of a load
    /// but the golden checks and the final bookkeeping ([`Snapshot::load`] does both).
    pub(crate) fn open(dir: &Path, opts: &LoadOptions) -> Result<Snapshot, SnapshotError> {
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
        Ok(Snapshot {
            files,
            layout,
            serving,
            info,
            deferred: opts.verify && opts.defer_item_verification,
            samples: Vec::new(),
        })
    }

    /// Completes a load that began at `started` (the files were open after `opened_ms`): keeps the
    /// warm-up samples, records the load time and logs what memory the kernel granted.
    pub(crate) fn finish_load(
        &mut self,
        samples: Vec<RankRequest>,
        started: Instant,
        opened_ms: u64,
        opts: &LoadOptions,
    ) {
        self.samples = samples;
        self.info.load_ms = started.elapsed().as_millis() as u64;
        self.info.loaded_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        self.log_memory(opened_ms, opts);
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

    fn data(&self) -> TowerData<'_, Mmap> {
        TowerData {
            weights: &self.files.weights,
            index: &self.files.index,
            attributes: &self.files.attributes,
        }
    }

    /// The item rows being served (the served dtype) and the id index.
    pub fn item_store(&self) -> ItemStore<'_, Mmap, Mmap> {
        self.store(self.serving)
    }

    fn store(&self, vectors: usize) -> ItemStore<'_, Mmap, Mmap> {
        ItemStore::new(&self.files.vectors[vectors], &self.files.index)
    }

    /// The user vector for one user (normalised, `dim` long).
    pub fn user_vector(&self, input: &UserInput<'_>) -> Result<Vec<f32>, ModelError> {
        self.layout.forward(self.data(), input)
    }

    /// Ranks `req.candidates` for `req.user` and returns at most `req.k` items (none for `k <= 0`;
    /// the ranking service validates `k` first) with the time each stage took. Scoring runs on
    /// `pool` (split across its idle workers when large), with the served dtype and the fast kernel.
    pub fn rank(
        &self,
        req: &RankRequest,
        pool: &ScoringPool,
        scratch: &mut Scratch,
    ) -> Result<RankResult, ModelError> {
        let target = Target {
            vectors: self.serving,
            kernel: Kernel::Fast,
        };
        self.rank_on(req, target, pool, scratch)
    }

    /// [`Snapshot::rank`] on any stored dtype and kernel (golden checks use f32 and the exact one).
    pub(crate) fn rank_on(
        &self,
        req: &RankRequest,
        target: Target,
        pool: &ScoringPool,
        scratch: &mut Scratch,
    ) -> Result<RankResult, ModelError> {
        let t = Instant::now();
        let input = UserInput::new(&req.user)?;
        let ignored_features = self.layout.ignored_features(&input);
        let u = self.user_vector(&input)?;
        let tower = t.elapsed();
        let t = Instant::now();
        let query = Query {
            user: &u,
            tau: self.files.manifest.tau,
            candidates: &req.candidates,
            k: req.k_or_zero(),
        };
        let (items, stats) = pool.rank(self.store(target.vectors), &query, target.kernel, scratch);
        Ok(RankResult {
            items,
            stats,
            ignored_features,
            timings: StageTimings {
                tower,
                scoring: t.elapsed(),
            },
        })
    }

    /// Runs `rounds` warm-up passes through the pipeline: of `request`, or (when `None`) of the
    /// golden requests with every item as a candidate. Faults in the pages the request path reads
    /// and proves it works on this snapshot; the registry calls it before a version can go live.
    pub fn warm_up(
        &self,
        rounds: usize,
        request: Option<&RankRequest>,
        pool: &ScoringPool,
    ) -> Result<(), ModelError> {
        if rounds == 0 {
            return Ok(());
        }
        let bounded_k = |r: &RankRequest| usize::try_from(r.k).unwrap_or(1).clamp(1, 10_000) as i64;
        let requests: Vec<RankRequest> = match request {
            Some(r) => vec![RankRequest {
                k: bounded_k(r),
                ..r.clone()
            }],
            None => {
                let ids = self.files.index.ids();
                self.samples
                    .iter()
                    .map(|r| RankRequest {
                        k: bounded_k(r),
                        candidates: ids.to_vec(),
                        ..r.clone()
                    })
                    .collect()
            }
        };
        let mut scratch = Scratch::default();
        for _ in 0..rounds {
            for r in &requests {
                self.rank(r, pool, &mut scratch)?;
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
        let req = sample_request(&mut rng, &ids, 2_000, 50).into_domain();
        let mut s = Scratch::default();
        let pool = ScoringPool::sequential();
        let a = full.rank(&req, &pool, &mut s).unwrap();
        let b = lazy.rank(&req, &pool, &mut s).unwrap();
        assert_eq!(a.items.len(), 50);
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
