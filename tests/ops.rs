//! Production behaviour: graceful shutdown of the real binary on SIGTERM, request ids, the metrics
//! exposition (checked by `promtool` when installed), per-request timeouts, slow and oversized
//! request heads, and the `--load-mode` protection against a snapshot file truncated while served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::reference::Reference;
use http_body_util::BodyExt;
use prerank::http::{router, AppState, Limits};
use prerank::registry::Registry;
use prerank::snapshot::LoadOptions;
use prerank_format::Dtype;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A port that was free a moment ago (the child binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `prerank serve` binary over `root` on a free port, logs to `log`.
fn spawn_binary(root: &Path, log: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_prerank"))
        .arg("serve")
        .arg("--model-root")
        .arg(root)
        .args([
            "--bind",
            &addr.to_string(),
            "--no-watch",
            "--poll-seconds",
            "0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (child, addr)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -TERM failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child on drop so a failing test never leaves a server running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn wait_ready_child(client: &reqwest::Client, addr: SocketAddr, child: &mut Child) {
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("server exited early: {s}");
        }
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {addr} never became ready");
}

fn fresh_client() -> reqwest::Client {
    // No connection reuse: every request is on its own connection, so "in flight" is unambiguous.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let (root, dir) = common::model_root(20_000, &[Dtype::F32]);
    let ids = Reference::open(&dir).ids();
    let log = root.path().join("server.log");
    let (child, addr) = spawn_binary(
        root.path(),
        &log,
        &[
            "--request-timeout-ms",
            "0",
            "--drain-seconds",
            "60",
            "--max-candidates",
            "500000",
            "--max-body-bytes",
            "16777216",
        ],
    );
    let mut child = Guard(child);
    let client = fresh_client();
    wait_ready_child(&client, addr, &mut child.0).await;

    // Large requests (500k candidates, every item 25 times over) keep the server busy for a while.
    let candidates: Vec<u64> = ids.iter().copied().cycle().take(500_000).collect();
    let body = json!({"user": {"id": 7}, "candidates": candidates, "k": 100}).to_string();
    let n = 6;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("http://{addr}/v1/rank"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        }));
    }
    // SIGTERM once all of them are in flight (the gauge counts requests being handled).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let in_flight = text
            .lines()
            .find(|l| l.starts_with("prerank_in_flight_requests "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if in_flight >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "requests never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    sigterm(&child.0);

    // Readiness turns 503 while the in-flight requests are still running.
    let mut saw_503 = false;
    for _ in 0..200 {
        match client.get(format!("http://{addr}/readyz")).send().await {
            Ok(r) if r.status() == 503 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "shutting_down");
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("readyz failed during drain: {e}"),
        }
    }
    assert!(saw_503, "readyz never turned 503 after SIGTERM");

    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap().expect("an in-flight request failed");
        assert_eq!(r.status(), 200, "in-flight request: {}", r.status());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 100);
        ok += 1;
    }
    assert_eq!(ok, n);
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    eprintln!(
        "{n} in-flight requests completed; exit {:?} after {:?}",
        status.code(),
        sent.elapsed()
    );
}

/// The in-process app over a small model.
fn small_app(timeout: Option<Duration>) -> (tempfile::TempDir, axum::Router, Vec<u64>) {
    let _ = prerank::telemetry::prometheus_handle(); // before loading: load metrics are recorded
    let (root, dir) = common::model_root(2_000, &[Dtype::F32]);
    let registry = std::sync::Arc::new(Registry::new(root.path(), None, LoadOptions::default()));
    prerank::server::load_all(&registry);
    let app = router(AppState::new(registry, Limits::default()).with_request_timeout(timeout));
    let ids = Reference::open(&dir).ids();
    (root, app, ids)
}

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post_rank(body: &Value, id: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/v1/rank").header("content-type", "application/json");
    if let Some(id) = id {
        b = b.header("x-request-id", id);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let (_root, app, ids) = small_app(None);
    let body = json!({"user": {}, "candidates": [ids[0], ids[1]], "k": 1});

    let (s, h, b) = call(&app, post_rank(&body, Some("abc-123"))).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-request-id"], "abc-123");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["request_id"], "abc-123");

    // Generated when absent (also on errors and other routes), 32 hex digits.
    let (s, h, _) = call(&app, post_rank(&json!({"k": 1}), None)).await;
    assert_eq!(s, 422);
    let id = h["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    let (_, h, _) = call(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(h["x-request-id"].len(), 32);

    // An unusable header (too long) is replaced, not echoed.
    let long = "x".repeat(200);
    let (_, h, _) = call(&app, post_rank(&body, Some(&long))).await;
    assert_ne!(h["x-request-id"], long.as_str());
    assert_eq!(h["x-request-id"].len(), 32);

    // The body's request_id wins in the body and in the header.
    let with_body_id = json!({"user": {}, "candidates": [ids[0]], "k": 1, "request_id": "body-1"});
    let (_, h, b) = call(&app, post_rank(&with_body_id, Some("hdr-1"))).await;
    assert_eq!(h["x-request-id"], "body-1");
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["request_id"],
        "body-1"
    );
}

#[tokio::test]
async fn request_past_its_deadline_gets_504_timeout() {
    let (_root, app, ids) = small_app(Some(Duration::from_millis(1)));
    let candidates: Vec<u64> = ids.iter().copied().cycle().take(200_000).collect();
    let body = json!({"user": {"id": 1}, "candidates": candidates, "k": 10});
    let (s, h, b) = call(&app, post_rank(&body, None)).await;
    assert_eq!(s, 504);
    assert!(h.get("x-request-id").is_some());
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{v}");

    // Without a deadline the same request succeeds.
    let (_root2, app2, ids2) = small_app(None);
    let candidates: Vec<u64> = ids2.iter().copied().cycle().take(200_000).collect();
    let body = json!({"user": {"id": 1}, "candidates": candidates, "k": 10});
    let (s, _, _) = call(&app2, post_rank(&body, None)).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn metrics_exposition_has_every_family_and_passes_promtool() {
    let (_root, app, ids) = small_app(None);
    let ok = json!({"user": {"id": 3}, "candidates": [ids[0], ids[1], 999_999_999_999u64], "k": 2});
    for _ in 0..3 {
        assert_eq!(call(&app, post_rank(&ok, None)).await.0, 200);
    }
    assert_eq!(call(&app, post_rank(&json!({"k": 0}), None)).await.0, 422);
    let bad = Request::post("/v1/rank")
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(call(&app, bad).await.0, 400);
    let (s, h, b) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(b).unwrap();
    for family in [
        "prerank_requests_total",
        "prerank_request_duration_seconds_bucket",
        "prerank_stage_duration_seconds_bucket{stage=\"decode\"",
        "prerank_stage_duration_seconds_bucket{stage=\"tower\"",
        "prerank_stage_duration_seconds_bucket{stage=\"scoring\"",
        "prerank_stage_duration_seconds_bucket{stage=\"encode\"",
        "prerank_in_flight_requests",
        "prerank_model_mapped_bytes{model=\"m\",version=\"1\"}",
        "prerank_model_huge_page_bytes{model=\"m\",version=\"1\"}",
        "prerank_candidates_per_request",
        "prerank_unknown_candidates_total",
        "prerank_model_load_attempts_total{model=\"m\"}",
        "prerank_model_load_duration_seconds_bucket",
        "prerank_model_live_version{model=\"m\"}",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let promtool = Command::new("promtool").arg("--version").output();
    match promtool {
        Ok(o) if o.status.success() => {
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ if std::env::var_os("PRERANK_REQUIRE_PROMTOOL").is_some() => {
            panic!("PRERANK_REQUIRE_PROMTOOL is set but promtool is not installed")
        }
        _ => eprintln!("promtool not installed: exposition not linted (CI installs it)"),
    }
}

/// A real server (in-process, port 0) with short connection limits.
async fn spawn_limited(
    root: &Path,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    common::spawn_server_with(root, |cfg| {
        cfg.poll_seconds = 0;
        cfg.no_watch = true;
        cfg.header_read_timeout_ms = 600;
        cfg.max_header_bytes = 16 * 1024;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_disconnected_while_others_are_served() {
    let (root, _dir) = common::model_root(300, &[Dtype::F32]);
    let (addr, stop, handle) = spawn_limited(root.path()).await;
    let client = fresh_client();
    common::wait_ready(&client, addr).await;

    // Three slowloris connections trickling one header byte every 100 ms.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                let started = Instant::now();
                for b in head.iter() {
                    if s.write_all(&[*b]).is_err() {
                        return (started.elapsed(), true);
                    }
                    let mut buf = [0u8; 256];
                    match s.read(&mut buf) {
                        Ok(0) => return (started.elapsed(), true), // closed by the server
                        Ok(_) => return (started.elapsed(), true), // an error response, then close
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return (started.elapsed(), true),
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (started.elapsed(), false)
            })
        })
        .collect();
    // Meanwhile normal clients are served promptly.
    for _ in 0..10 {
        let t = Instant::now();
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in slow {
        let (after, cut) = t.join().unwrap();
        assert!(cut, "a slow header sender was never disconnected");
        assert!(
            after < Duration::from_secs(3),
            "disconnected only after {after:?}"
        );
    }
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    let (root, _dir) = common::model_root(300, &[Dtype::F32]);
    let (addr, stop, handle) = spawn_limited(root.path()).await;
    let client = fresh_client();
    common::wait_ready(&client, addr).await;
    let big = "y".repeat(40 * 1024);
    let status = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let _ = s.write_all(req.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 431"), "got {status:?}");
    // Still serving.
    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

/// Serves one model with `--load-mode mode`, truncates its item vectors in place, then ranks.
async fn truncate_while_served(mode: &str) -> (Option<std::process::ExitStatus>, Option<u16>) {
    let (root, dir) = common::model_root(3_000, &[Dtype::F32]);
    let ids = Reference::open(&dir).ids();
    let log = root.path().join("server.log");
    let (child, addr) = spawn_binary(root.path(), &log, &["--load-mode", mode]);
    let mut child = Guard(child);
    let client = fresh_client();
    wait_ready_child(&client, addr, &mut child.0).await;
    let vec_file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".vec"))
        .unwrap();
    // The forbidden operation: an in-place truncate of a published, served file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vec_file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let body = json!({"user": {"id": 1}, "candidates": ids, "k": 5}).to_string();
    let r = client
        .post(format!("http://{addr}/v1/rank"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let status = r.ok().map(|r| r.status().as_u16());
    let exited = if status.is_none() {
        Some(wait_exit(&mut child.0, Duration::from_secs(10)))
    } else {
        // Still alive: a second request is served too, then shut down cleanly.
        let r = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sigterm(&child.0);
        assert_eq!(
            wait_exit(&mut child.0, Duration::from_secs(30)).code(),
            Some(0)
        );
        None
    };
    (exited, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_after_mapping_mmap_mode_dies_of_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let (exited, status) = truncate_while_served("mmap").await;
    assert_eq!(status, None, "expected the request to fail");
    let exited = exited.expect("process still running");
    assert_eq!(exited.signal(), Some(libc::SIGBUS), "{exited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_after_loading_copy_mode_keeps_serving() {
    let (exited, status) = truncate_while_served("copy").await;
    assert_eq!(exited, None);
    assert_eq!(status, Some(200));
}

/// Unmounts (and removes) a tmpfs mount point on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn publish_onto_a_full_disk_fails_and_leaves_no_partial_version() {
    // A 20k-item snapshot is ~10 MB; the file system holds 1 MB. Needs root for `mount`.
    let (_root, dir) = common::model_root(20_000, &[Dtype::F32]);
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(mnt.path())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _guard = Mount(mnt.path().to_path_buf());
    let model_dir = mnt.path().join("m");
    let out = Command::new(env!("CARGO_BIN_EXE_prerank"))
        .arg("publish")
        .arg(&dir)
        .arg(&model_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("No space left on device"),
        "error should name the cause: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "publish left {left:?} behind");
}

#[tokio::test]
async fn openapi_document_covers_every_route_and_wire_type() {
    let (_root, app, _ids) = small_app(None);
    let (s, h, b) = call(
        &app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/json");
    let doc: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/rank",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    for schema in [
        "RankRequest",
        "UserJson",
        "BehaviorJson",
        "RankResponse",
        "RankedItem",
        "ErrorBody",
        "ErrorDetail",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    let responses = &doc["paths"]["/v1/rank"]["post"]["responses"];
    for status in ["200", "400", "404", "413", "415", "422", "503", "504"] {
        assert!(
            responses[status].is_object(),
            "/v1/rank {status} undocumented"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["RankRequest"]["additionalProperties"], false,
        "unknown fields are rejected, the schema must say so"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_accepting_with_readiness_503() {
    let (root, dir) = common::model_root(300, &[Dtype::F32]);
    let ids = Reference::open(&dir).ids();
    let log = root.path().join("server.log");
    let (child, addr) = spawn_binary(root.path(), &log, &["--shutdown-delay-seconds", "1"]);
    let mut child = Guard(child);
    let client = fresh_client();
    wait_ready_child(&client, addr, &mut child.0).await;
    let sent = Instant::now();
    sigterm(&child.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing in flight, but within the delay: still accepting, not ready, and still ranking.
    let r = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = json!({"user": {}, "candidates": [ids[0]], "k": 1}).to_string();
    let r = client
        .post(format!("http://{addr}/v1/rank"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = wait_exit(&mut child.0, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn beyond_max_inflight_requests_are_shed_at_once_with_retry_after() {
    let _ = prerank::telemetry::prometheus_handle();
    let (root, dir) = common::model_root(500, &[Dtype::F32]);
    let registry = std::sync::Arc::new(Registry::new(root.path(), None, LoadOptions::default()));
    prerank::server::load_all(&registry);
    let limits = Limits {
        max_inflight: 2,
        ..Limits::default()
    };
    let state = AppState::new(registry, limits);
    let permits = std::sync::Arc::clone(&state.inflight);
    let app = router(state);
    let ids = Reference::open(&dir).ids();
    let body = json!({"user": {}, "candidates": [ids[0]], "k": 1});

    // Both permits busy (as if two requests were computing): the next one is refused at once.
    let held = permits.clone().try_acquire_many_owned(2).unwrap();
    let t = Instant::now();
    let (s, h, b) = call(&app, post_rank(&body, None)).await;
    assert_eq!(s, 503);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "shedding must not wait"
    );
    assert_eq!(h["retry-after"], "1");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    let (_, _, m) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("prerank_shed_requests_total{reason=\"overloaded\"}")),
        "{m}"
    );

    // Capacity back: served again.
    drop(held);
    assert_eq!(call(&app, post_rank(&body, None)).await.0, 200);
}
