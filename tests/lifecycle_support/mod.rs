//! Fixtures of the lifecycle, admin and bucket tests: small synthetic snapshots, publishing, a real
//! server (ranking + optional admin listener) on port 0, and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prerank::server::{run_with_admin, Secret, ServeConfig};
use prerank::synth::{generate, SynthConfig};
use prerank_format::Dtype;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A small synthetic snapshot of `model` at `dir` (manifest version `version`).
pub fn synth(dir: &Path, model: &str, version: u64, seed: u64) {
    generate(
        dir,
        &SynthConfig {
            model: model.into(),
            version,
            items: 400,
            seed,
            dtypes: vec![Dtype::F32],
            golden: 1,
            categories: 20,
            tower_widths: [64, 48, 32],
        },
    )
    .unwrap();
}

/// A scratch snapshot of `model` to publish from: `<scratch>/<model>/1`.
pub fn source(scratch: &Path, model: &str, seed: u64) -> PathBuf {
    let dir = scratch.join(format!("src-{model}-{seed}")).join("1");
    synth(&dir, model, 1, seed);
    dir
}

/// Flips one byte in the middle of a file (same size: complete, but the checksum fails).
pub fn corrupt(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

/// Starts a server on `root` (poll 1 s, watcher on); `tweak` adjusts the config; `admin` adds an
/// admin listener with [`TOKEN`].
pub async fn start(root: &Path, admin: bool, tweak: impl FnOnce(&mut ServeConfig)) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (admin_listener, admin_addr) = if admin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (Some(l), Some(a))
    } else {
        (None, None)
    };
    let mut cfg = ServeConfig::with_root(root.to_path_buf());
    cfg.poll_seconds = 1;
    if admin {
        cfg.admin_token = Some(Secret::new(TOKEN));
    }
    tweak(&mut cfg);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(run_with_admin(cfg, listener, admin_listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        admin: admin_addr,
        stop: Some(tx),
        handle: Some(handle),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `secs`.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// `GET /v1/models` as JSON.
pub async fn models(c: &reqwest::Client, s: &Server) -> Value {
    c.get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The serving version of `model` per `/v1/models`.
pub async fn serving(c: &reqwest::Client, s: &Server, model: &str) -> Option<u64> {
    let m = models(c, s).await;
    m["models"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == model)?["live"]["version"]
        .as_u64()
}

/// The state of `model`/`version` per `/v1/models` ("" if not listed).
pub async fn state(c: &reqwest::Client, s: &Server, model: &str, version: u64) -> String {
    let m = models(c, s).await;
    m["models"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == model))
        .and_then(|e| e["versions"].as_array())
        .and_then(|vs| vs.iter().find(|v| v["version"] == version))
        .and_then(|v| v["state"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Waits until `model` serves `version`.
pub async fn wait_serving(c: &reqwest::Client, s: &Server, model: &str, version: u64) {
    wait_until(
        30,
        &format!("{model} to serve version {version}"),
        || async { serving(c, s, model).await == Some(version) },
    )
    .await;
}

/// Waits for `/readyz` 200.
pub async fn wait_ready(c: &reqwest::Client, s: &Server) {
    wait_until(30, "/readyz 200", || async {
        matches!(c.get(s.url("/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
}

/// A ranking body for user `user` (a few candidates; synthetic ids are arbitrary u64s, unknown ones are
/// skipped, so any list works).
pub fn body(user: u64) -> Value {
    json!({
        "user": {"id": user, "features": {"age": 30}, "behaviors": []},
        "candidates": [1, 2, 3, 4, 5, 6, 7, 8],
        "k": 3
    })
}

/// Lines of `/proc/self/maps` naming a path under `dir`.
pub fn mappings_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{dir}/")))
        .map(str::to_string)
        .collect()
}

/// The item ids of a snapshot (no verification).
pub fn item_ids(dir: &Path) -> Vec<u64> {
    let files =
        prerank_format::SnapshotFiles::open(dir, &prerank_format::OpenOptions::unverified())
            .unwrap();
    files.index.ids().to_vec()
}

/// A ranking body for user `user` over `ids`.
pub fn body_with(user: u64, ids: &[u64]) -> Value {
    json!({
        "user": {"id": user, "features": {"age": 30}, "behaviors": [{"item_id": ids[0]}]},
        "candidates": ids,
        "k": 5
    })
}
