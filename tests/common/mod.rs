//! Shared test fixtures: synthetic snapshots on disk and servers on real sockets.
#![allow(dead_code)]

pub mod reference;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prerank::http::{router, AppState, Limits};
use prerank::registry::Registry;
use prerank::server::{run, ServeConfig};
use prerank::snapshot::LoadOptions;
use prerank::synth::{generate, SynthConfig};
use prerank_format::Dtype;

/// A model root with one synthetic model `m` version 1 (`items` items, the given dtypes).
pub fn model_root(items: usize, dtypes: &[Dtype]) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m").join("1");
    generate(
        &dir,
        &SynthConfig {
            model: "m".into(),
            version: 1,
            items,
            seed: 11,
            dtypes: dtypes.to_vec(),
            golden: 2,
            categories: 40,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    (root, dir)
}

/// The in-process router over `root`, models loaded synchronously.
pub fn app(root: &Path, limits: Limits) -> axum::Router {
    let registry = Arc::new(Registry::new(root, None, LoadOptions::default()));
    prerank::server::load_all(&registry);
    router(AppState::new(registry, limits))
}

/// A real server on 127.0.0.1:0; returns its address and a shutdown trigger.
pub async fn spawn_server(
    root: &Path,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    spawn_server_with(root, |cfg| cfg.poll_seconds = 1).await
}

/// [`spawn_server`] with the configuration adjusted by `configure` before the server starts.
pub async fn spawn_server_with(
    root: &Path,
    configure: impl FnOnce(&mut ServeConfig),
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut cfg = ServeConfig::with_root(root.to_path_buf());
    configure(&mut cfg);
    let handle = tokio::spawn(run(cfg, listener, async move {
        let _ = rx.await;
    }));
    (addr, tx, handle)
}

/// Polls `/readyz` until 200 (or panics after 30 s).
pub async fn wait_ready(client: &reqwest::Client, addr: SocketAddr) {
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("server at {addr} never became ready");
}
