//! Start-up and lifecycle: the serve configuration, the model loader and poller, and [`run`], which
//! serves the router on a given listener until a shutdown future resolves.
//!
//! `run` starts answering at once (`/healthz` 200, `/readyz` 503) and loads models on the blocking pool;
//! `/readyz` turns 200 when a verified model is live. A poller re-scans the model root every
//! `poll_interval` and installs newer versions that verify; a version that fails verification is
//! recorded and the current one keeps serving.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prerank_format::Dtype;
use tokio::net::TcpListener;

use crate::http::{router, AppState, Limits};
use crate::registry::Registry;
use crate::snapshot::LoadOptions;

/// `prerank serve` configuration. Every flag has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Model repository root, laid out as <root>/<model>/<version>/.
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
    /// Seconds between scans of the model root for new versions (0 disables).
    #[arg(long, env = "PRERANK_POLL_SECONDS", default_value_t = 5)]
    pub poll_seconds: u64,
    /// Do not ask for transparent huge pages on item files.
    #[arg(long, env = "PRERANK_NO_HUGE_PAGES")]
    pub no_huge_pages: bool,
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
            poll_seconds: 5,
            no_huge_pages: false,
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

    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.item_dtype,
            verify: true,
            huge_pages: !self.no_huge_pages,
            golden: true,
        }
    }
}

/// Loads the newest verifying version of every model under the root (blocking).
pub fn load_all(registry: &Registry) {
    match registry.model_names() {
        Ok(names) => {
            if names.is_empty() {
                tracing::warn!(root = %registry.root().display(), "no model directories under the model root");
            }
            for name in names {
                registry.load_latest(&name);
            }
        }
        Err(e) => {
            tracing::error!(root = %registry.root().display(), error = %e, "cannot read the model root")
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests and returns.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::new(
        &config.model_root,
        config.default_model.clone(),
        config.load_options(),
    ));
    let state = AppState::new(Arc::clone(&registry), config.limits());
    let loader = {
        let registry = Arc::clone(&registry);
        let interval = config.poll_seconds;
        tokio::spawn(async move {
            loop {
                let r = Arc::clone(&registry);
                if let Err(e) = tokio::task::spawn_blocking(move || load_all(&r)).await {
                    tracing::error!(error = %e, "model loader task failed");
                }
                if interval == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(interval)).await;
            }
        })
    };
    tracing::info!(addr = %listener.local_addr()?, root = %config.model_root.display(), "prerank listening");
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    loader.abort();
    served?;
    Ok(())
}
