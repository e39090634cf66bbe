//! Start-up and lifecycle wiring: the serve configuration and [`run`], which serves the ranking API (and
//! the admin API on its own listener, when enabled) until a shutdown future resolves.
//!
//! `run` starts answering at once (`/healthz` 200, `/readyz` 503) and loads models on the blocking pool;
//! `/readyz` turns 200 when every configured bucket (or, without buckets, a model) has a verified
//! snapshot live. New versions are discovered by a file watcher on the model root with a periodic
//! rescan as fallback ([`crate::watch`]); a version that fails verification is recorded and the current
//! one keeps serving.
//!
//! Shutdown (SIGTERM, or the `shutdown` future) drains: `/readyz` turns 503 `shutting_down` at once
//! while the listener keeps serving, for at least `--shutdown-delay-seconds` (time for load balancers
//! to stop routing here); then, once no request is in flight (or half of `--drain-seconds` has
//! passed), the listener closes, open requests complete, and `run` returns once every connection is
//! closed or `--drain-seconds` have passed in all. Secrets (the admin token) never appear in `Debug` output or logs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prerank_format::reader::LoadMode;
use prerank_format::Dtype;
use tokio::net::TcpListener;

use crate::api::{parse_json, RankRequest};
use crate::buckets::Buckets;
pub use crate::http::Secret;
use crate::http::{admin_router, router, serve, AdminState, AppState, ConnLimits, Limits};
use crate::parallel::ScoringPool;
use crate::registry::Registry;
use crate::snapshot::LoadOptions;
use crate::watch::{self, DiscoveryConfig};

/// `prerank serve` configuration. Every flag has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Model repository root, laid out as ROOT/MODEL/VERSION/.
    #[arg(long, env = "PRERANK_MODEL_ROOT", default_value = "models")]
    pub model_root: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "PRERANK_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Model used when a request names none (default: the only loaded model).
    #[arg(long, env = "PRERANK_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Item vector dtype to serve (f32, f16, int8); default: the snapshot's first.
    #[arg(long, env = "PRERANK_ITEM_DTYPE")]
    pub item_dtype: Option<Dtype>,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "PRERANK_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Most candidates per request.
    #[arg(long, env = "PRERANK_MAX_CANDIDATES", default_value_t = 200_000)]
    pub max_candidates: usize,
    /// Most behaviours per request (the model uses at most its max_len of them).
    #[arg(long, env = "PRERANK_MAX_BEHAVIORS", default_value_t = 1_000)]
    pub max_behaviors: usize,
    /// Largest k.
    #[arg(long, env = "PRERANK_MAX_K", default_value_t = 10_000)]
    pub max_k: usize,
    /// Ranking requests computing at once; beyond it requests get 503 + Retry-After.
    #[arg(long, env = "PRERANK_MAX_INFLIGHT", default_value_t = 64)]
    pub max_inflight: usize,
    /// Deadline of one ranking request, milliseconds, from its arrival; past it the client gets 504
    /// `timeout` (0: no deadline).
    #[arg(long, env = "PRERANK_REQUEST_TIMEOUT_MS", default_value_t = 2_000)]
    pub request_timeout_ms: u64,
    /// Time a client has to send a complete request head, milliseconds (slowloris protection;
    /// also closes idle keep-alive connections).
    #[arg(long, env = "PRERANK_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes; larger heads get 431. At least 8192.
    #[arg(long, env = "PRERANK_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Longest graceful shutdown, seconds: readiness 503, in-flight requests finish, then exit.
    #[arg(long, env = "PRERANK_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// After SIGTERM, keep accepting requests (readiness 503) at least this long, seconds, so load
    /// balancers stop routing here before the listener closes (Kubernetes: 5).
    #[arg(long, env = "PRERANK_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,
    /// Seconds between rescans of the model root (fallback to the file watcher; 0 disables).
    #[arg(long, env = "PRERANK_POLL_SECONDS", default_value_t = 5)]
    pub poll_seconds: u64,
    /// Do not watch the model root for changes (rely on --poll-seconds alone).
    #[arg(long, env = "PRERANK_NO_WATCH")]
    pub no_watch: bool,
    /// Warm-up passes over a new snapshot before it is swapped in (0: verification only).
    #[arg(long, env = "PRERANK_WARMUP_ROUNDS", default_value_t = 1)]
    pub warmup_rounds: usize,
    /// JSON file with one /v1/rank request body replayed as warm-up (default: the snapshot's golden
    /// requests, scoring every item).
    #[arg(long, env = "PRERANK_WARMUP_REQUEST")]
    pub warmup_request: Option<PathBuf>,
    /// A/B bucket config (TOML; docs/operations.md). Without it every request is bucket `default`.
    #[arg(long, env = "PRERANK_BUCKETS")]
    pub buckets: Option<PathBuf>,
    /// Serve only this bucket (one container per bucket).
    #[arg(long, env = "PRERANK_BUCKET")]
    pub bucket: Option<String>,
    /// Address of the admin API (off unless set; keep it on a private interface).
    #[arg(long, env = "PRERANK_ADMIN_BIND")]
    pub admin_bind: Option<String>,
    /// Bearer token the admin API requires (mandatory when the admin API is on).
    #[arg(long, env = "PRERANK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// File holding the admin token (e.g. a mounted Kubernetes secret); surrounding whitespace is
    /// ignored. Exclusive with --admin-token.
    #[arg(long, env = "PRERANK_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// How snapshot files get into memory: `mmap` (shared page cache; relies on published files
    /// never being modified in place) or `copy` (private memory; immune to in-place changes).
    #[arg(long, env = "PRERANK_LOAD_MODE", default_value = "mmap")]
    pub load_mode: LoadMode,
    /// Do not ask for transparent huge pages on item files.
    #[arg(long, env = "PRERANK_NO_HUGE_PAGES")]
    pub no_huge_pages: bool,
    /// When the item files (vectors, id index, attributes) are checksummed and scanned: `full`
    /// (before the version serves) or `deferred` (in the background once it serves; the manifest,
    /// weights, sizes and headers are still checked first; a version failing the background check
    /// is marked failed and replaced). docs/operations.md has the trade-off.
    #[arg(long, env = "PRERANK_VERIFY", default_value = "full")]
    pub verify: VerifyMode,
    /// Fault the served snapshot files into memory before a version goes live (no page faults on
    /// the request path; costs the files' size in resident memory and a full read at load).
    #[arg(long, env = "PRERANK_PREFAULT")]
    pub prefault: bool,
    /// Threads of the scoring pool that splits one large request when cores are idle (0: never
    /// split; default: the number of CPUs).
    #[arg(long, env = "PRERANK_SCORING_THREADS")]
    pub scoring_threads: Option<usize>,
    /// Smallest request (candidates) that may be split across the scoring pool (chunks are at
    /// least half of it). 10,000: a 2-way split measured 1.4-1.6x faster at 10^4 candidates.
    #[arg(
        long,
        env = "PRERANK_PARALLEL_MIN_CANDIDATES",
        default_value_t = 10_000
    )]
    pub parallel_min_candidates: usize,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "PRERANK_LOG_JSON")]
    pub log_json: bool,
}

impl ServeConfig {
    /// The defaults, with `model_root` (for tests and embedding).
    pub fn with_root(model_root: PathBuf) -> ServeConfig {
        ServeConfig {
            model_root,
            bind: "127.0.0.1:0".into(),
            default_model: None,
            item_dtype: None,
            max_body_bytes: Limits::default().max_body_bytes,
            max_candidates: Limits::default().max_candidates,
            max_behaviors: Limits::default().max_behaviors,
            max_k: Limits::default().max_k,
            max_inflight: Limits::default().max_inflight,
            request_timeout_ms: 2_000,
            header_read_timeout_ms: ConnLimits::default().header_read_timeout.as_millis() as u64,
            max_header_bytes: ConnLimits::default().max_header_bytes,
            drain_seconds: 20,
            shutdown_delay_seconds: 0,
            poll_seconds: 5,
            no_watch: false,
            warmup_rounds: 1,
            warmup_request: None,
            buckets: None,
            bucket: None,
            admin_bind: None,
            admin_token: None,
            admin_token_file: None,
            no_huge_pages: false,
            verify: VerifyMode::Full,
            prefault: false,
            scoring_threads: Some(0),
            parallel_min_candidates: 10_000,
            load_mode: LoadMode::Mmap,
            log_json: false,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_candidates: self.max_candidates,
            max_behaviors: self.max_behaviors,
            max_k: self.max_k,
            max_inflight: self.max_inflight.max(1),
        }
    }

    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes,
        }
    }

    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.item_dtype,
            verify: true,
            huge_pages: !self.no_huge_pages,
            golden: true,
            load_mode: self.load_mode,
            defer_item_verification: self.verify == VerifyMode::Deferred,
            prefault: self.prefault,
        }
    }

    /// The scoring pool `--scoring-threads` asks for ([`ScoringPool::sequential`] for 0).
    pub fn scoring_pool(&self) -> anyhow::Result<Arc<ScoringPool>> {
        let threads = self.scoring_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if threads == 0 {
            return Ok(Arc::new(ScoringPool::sequential()));
        }
        Ok(Arc::new(
            ScoringPool::new(threads, self.parallel_min_candidates)
                .context("cannot start the scoring pool")?,
        ))
    }

    /// The bucket plan: the config file (if any), pinned to `--bucket` (if set).
    pub fn load_buckets(&self) -> anyhow::Result<Buckets> {
        let b = match &self.buckets {
            Some(p) => Buckets::load(p)?,
            None => Buckets::none(),
        };
        Ok(match &self.bucket {
            Some(name) => b.pin(name)?,
            None => b,
        })
    }

    fn discovery(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            watch: !self.no_watch,
            poll: (self.poll_seconds > 0).then(|| Duration::from_secs(self.poll_seconds)),
            debounce: Duration::from_millis(200),
        }
    }
}

/// When item files are verified (`--verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Before the version serves.
    Full,
    /// In the background once it serves; a failure takes the version out of service
    /// ([`crate::registry`] module doc).
    Deferred,
}

impl std::str::FromStr for VerifyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(VerifyMode::Full),
            "deferred" => Ok(VerifyMode::Deferred),
            other => Err(format!(
                "unknown verify mode {other:?} (expected full or deferred)"
            )),
        }
    }
}

/// Loads the newest verifying version of every model under the root (blocking).
pub fn load_all(registry: &Registry) {
    registry.reconcile_all();
}

/// Serves until `shutdown` resolves, then drains in-flight requests and returns. Binds the admin
/// listener itself when `config.admin_bind` is set.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin = match &config.admin_bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        None => None,
    };
    run_with_admin(config, listener, admin, shutdown).await
}

/// [`run`] with an already-bound admin listener (tests bind port 0).
pub async fn run_with_admin(
    config: ServeConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting");
    let configured = match (&config.admin_token, &config.admin_token_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give the admin token once: --admin-token or --admin-token-file")
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
            Some(Secret::new(text.trim()))
        }
        (None, None) => None,
    };
    let token = match (&admin, configured) {
        (Some(_), Some(t)) if !t.expose().is_empty() => Some(t),
        (Some(_), _) => anyhow::bail!(
            "the admin API needs a token: set PRERANK_ADMIN_TOKEN, PRERANK_ADMIN_TOKEN_FILE or \
             --admin-token"
        ),
        (None, _) => None,
    };
    let buckets = Arc::new(config.load_buckets()?);
    let pool = config.scoring_pool()?;
    if pool.threads() > 0 {
        tracing::info!(
            threads = pool.threads(),
            min_candidates = pool.min_candidates(),
            "scoring pool: large requests split across idle cores"
        );
    }
    tracing::info!(thp = %crate::hugepages::thp_mode(), huge_pages = !config.no_huge_pages, load_mode = %config.load_mode, prefault = config.prefault, verify = ?config.verify, "memory settings");
    let warmup_request = match &config.warmup_request {
        Some(p) => {
            let text = std::fs::read(p)
                .with_context(|| format!("cannot read the warm-up request {}", p.display()))?;
            let req: RankRequest = parse_json(&text)
                .map_err(|e| anyhow::anyhow!("warm-up request {}: {e:?}", p.display()))?;
            Some(req.into_domain())
        }
        None => None,
    };
    let registry = Arc::new(
        Registry::new(
            &config.model_root,
            config.default_model.clone(),
            config.load_options(),
        )
        .with_bucket_targets(buckets.targets())
        .with_warmup(config.warmup_rounds, warmup_request)
        .with_scoring(Arc::clone(&pool)),
    );
    let state = AppState::new(Arc::clone(&registry), config.limits())
        .with_buckets(Arc::clone(&buckets))
        .with_scoring(pool)
        .with_request_timeout(
            (config.request_timeout_ms > 0)
                .then(|| Duration::from_millis(config.request_timeout_ms)),
        );
    let discovery = watch::spawn(Arc::clone(&registry), config.discovery());

    // Shutdown in three steps (module doc): draining, stop accepting, deadline.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(false);
    let lifecycle = Arc::clone(&state.lifecycle);
    let delay = Duration::from_secs(config.shutdown_delay_seconds);
    let drain = Duration::from_secs(config.drain_seconds).max(delay + Duration::from_secs(1));
    tokio::spawn(async move {
        shutdown.await;
        lifecycle.start_draining();
        let started = tokio::time::Instant::now();
        tracing::info!(
            in_flight = lifecycle.in_flight(),
            drain_seconds = drain.as_secs(),
            "shutting down: readiness 503, draining in-flight requests"
        );
        let accept_at_most = delay.max(drain / 2);
        while started.elapsed() < delay
            || (lifecycle.in_flight() > 0 && started.elapsed() < accept_at_most)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(true);
        tokio::time::sleep_until(started + drain).await;
        let _ = deadline_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let conn_limits = config.conn_limits();

    let admin_task = match (admin, token) {
        (Some(l), Some(token)) => {
            tracing::info!(addr = %l.local_addr()?, "admin API listening");
            let app = admin_router(AdminState {
                registry: Arc::clone(&registry),
                buckets: Arc::clone(&buckets),
                token: Arc::new(token),
            });
            let stop = stopped(stop_rx.clone());
            let deadline = stopped(deadline_rx.clone());
            let limits = conn_limits.clone();
            Some(tokio::spawn(async move {
                serve(l, app, limits, stop, deadline).await
            }))
        }
        _ => None,
    };
    tracing::info!(addr = %listener.local_addr()?, root = %config.model_root.display(), "prerank listening");
    serve(
        listener,
        router(state),
        conn_limits,
        stopped(stop_rx),
        stopped(deadline_rx),
    )
    .await;
    discovery.abort();
    if let Some(t) = admin_task {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "admin API task failed");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
