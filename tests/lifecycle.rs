//! Model lifecycle on a real server with real files: hot swap under load, publish in progress, release
//! of the replaced snapshot's memory maps, and `prerank publish`.

mod lifecycle_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_support as ls;
use prerank::publish::publish;
use prerank::registry::Registry;
use prerank::snapshot::LoadOptions;

/// One observed response: when the request was sent, the version that served it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    sent: Instant,
    version: u64,
}

/// Its own model name: metrics are process-wide and the tests of this file run in parallel.
const MODEL: &str = "swapped";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_ten_publishes_one_corrupt_zero_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join(MODEL);
    let src = ls::source(scratch.path(), MODEL, 21);
    let ids = ls::item_ids(&src);
    publish(&src, &model_dir, Some(1)).unwrap();

    let server = ls::start(root.path(), false, |_| {}).await;
    let c = ls::client();
    ls::wait_ready(&c, &server).await;

    // The client pool: requests back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for worker in 0..4u64 {
        let (c, url, ids) = (c.clone(), server.url("/v1/rank"), ids.clone());
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut user = worker * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                user += 1;
                let sent = Instant::now();
                match c.post(&url).json(&ls::body_with(user, &ids)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        seen.push(Seen {
                            sent,
                            version: v["version"].as_u64().unwrap(),
                        });
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{status}: {text}"));
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
            seen
        }));
    }

    // Ten publishes: versions 2..=11, version 6 corrupt (complete files, one byte flipped).
    const CORRUPT: u64 = 6;
    let mut live_from: Vec<(u64, Instant)> = vec![(1, Instant::now())];
    let mut good = BTreeSet::from([1u64]);
    for v in 2..=11u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if v == CORRUPT {
            let side = scratch.path().join("side").join(MODEL);
            let (s, d) = (src.clone(), side.clone());
            let bad = tokio::task::spawn_blocking(move || publish(&s, &d, Some(v)).unwrap())
                .await
                .unwrap();
            ls::corrupt(&bad.join("items.f32.vec"));
            std::fs::rename(&bad, model_dir.join(v.to_string())).unwrap();
            ls::wait_until(30, "the corrupt version to be rejected", || async {
                ls::state(&c, &server, MODEL, v).await == "failed"
            })
            .await;
            continue;
        }
        let (s, d) = (src.clone(), model_dir.clone());
        tokio::task::spawn_blocking(move || publish(&s, &d, Some(v)).unwrap())
            .await
            .unwrap();
        ls::wait_serving(&c, &server, MODEL, v).await;
        live_from.push((v, Instant::now()));
        good.insert(v);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in clients {
        let seen = h.await.unwrap();
        // Per client, versions never go backwards (installs are monotonic under `latest`).
        assert!(
            seen.windows(2).all(|w| w[0].version <= w[1].version),
            "a client saw the version go backwards"
        );
        all.extend(seen);
    }

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "non-2xx responses: {failures:?}");
    assert!(all.len() > 100, "only {} responses", all.len());
    let served: BTreeSet<u64> = all.iter().map(|s| s.version).collect();
    assert!(!served.contains(&CORRUPT), "the corrupt version was served");
    assert!(served.is_subset(&good), "served {served:?}, good {good:?}");
    // A request sent after we saw version v' live was never served by an older version.
    for s in &all {
        let newer_seen_before_send = live_from
            .iter()
            .filter(|(_, at)| *at <= s.sent)
            .map(|(v, _)| *v)
            .max()
            .unwrap_or(1);
        assert!(
            s.version >= newer_seen_before_send,
            "request sent after version {newer_seen_before_send} was live got version {}",
            s.version
        );
    }
    let status = ls::state(&c, &server, MODEL, CORRUPT).await;
    assert_eq!(status, "failed");
    // No leak across the ten reloads: only the live version stays mapped.
    ls::wait_until(10, "only version 11 to stay mapped", || async {
        let maps = ls::mappings_under(&model_dir);
        !maps.is_empty() && maps.iter().all(|l| l.contains(&format!("{MODEL}/11/")))
    })
    .await;

    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("prerank_model_load_failures_total{model=\"swapped\"}")),
        "{metrics}"
    );
    assert!(metrics.contains("prerank_model_live_version{model=\"swapped\"} 11"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_copied_version_is_not_loaded_until_complete() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join("m");
    let src = ls::source(scratch.path(), "m", 22);
    publish(&src, &model_dir, Some(1)).unwrap();
    // The version-2 files as a person would copy them (manifest first: the worst order).
    let staged = publish(&src, &scratch.path().join("staged").join("m"), Some(2)).unwrap();
    // A complete temp dir of an in-progress publish is never a version.
    let tmp = model_dir.join(".tmp-publish-9-1-1");
    copy_dir(
        &publish(&src, &scratch.path().join("t").join("m"), Some(9)).unwrap(),
        &tmp,
    );

    let server = ls::start(root.path(), false, |_| {}).await;
    let c = ls::client();
    ls::wait_ready(&c, &server).await;

    let dest = model_dir.join("2");
    std::fs::create_dir(&dest).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&staged)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json")
        .collect();
    names.sort();
    names.insert(0, "manifest.json".into());
    let mut saw_incomplete = false;
    for name in &names {
        let bytes = std::fs::read(staged.join(name)).unwrap();
        // Each file in two halves, with a pause in between (a slow copy, growing files).
        let half = bytes.len() / 2;
        let mut f = std::fs::File::create(dest.join(name)).unwrap();
        use std::io::Write;
        f.write_all(&bytes[..half]).unwrap();
        f.flush().unwrap();
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let st = ls::state(&c, &server, "m", 2).await;
            assert!(
                st.is_empty() || st == "incomplete",
                "version 2 is {st:?} mid-copy"
            );
            saw_incomplete |= st == "incomplete";
            assert_eq!(ls::serving(&c, &server, "m").await, Some(1));
        }
        f.write_all(&bytes[half..]).unwrap();
        drop(f);
    }
    assert!(
        saw_incomplete,
        "the partial version was never reported incomplete"
    );
    ls::wait_serving(&c, &server, "m", 2).await;
    assert_eq!(ls::state(&c, &server, "m", 9).await, "");
    let r: serde_json::Value = c
        .post(server.url("/v1/rank"))
        .json(&ls::body(5))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["version"], 2);
    server.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_snapshot_is_unmapped_when_its_last_request_ends() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join("m");
    let src = ls::source(scratch.path(), "m", 23);
    publish(&src, &model_dir, Some(1)).unwrap();
    let v1 = model_dir.join("1");

    // Registry level: a request holding the old snapshot keeps its maps; once it is dropped, the
    // lifecycle thread's reap unmaps them.
    let registry = Registry::new(root.path(), None, LoadOptions::default());
    registry.reconcile_all();
    assert!(
        !ls::mappings_under(&v1).is_empty(),
        "version 1 is not mapped"
    );
    let held = registry.get(None).unwrap();
    publish(&src, &model_dir, Some(2)).unwrap();
    registry.reconcile_all();
    assert_eq!(registry.live_version("m"), Some(2));
    assert!(
        !ls::mappings_under(&v1).is_empty(),
        "version 1 was unmapped while a request still held it"
    );
    assert_eq!(held.info().version, 1);
    assert_eq!(registry.retired_count(), 1);
    drop(held);
    // The request does not pay for the munmap: the lifecycle thread's reap does.
    assert!(!ls::mappings_under(&v1).is_empty());
    assert_eq!(registry.reap(), 0);
    assert_eq!(ls::mappings_under(&v1), Vec::<String>::new());
    let v2 = model_dir.join("2");
    assert!(!ls::mappings_under(&v2).is_empty());
    drop(registry);
    assert!(ls::mappings_under(&v2).is_empty());

    // Real server: after the swap to version 3 and a few requests, version 2's maps are gone.
    let server = ls::start(root.path(), false, |_| {}).await;
    let c = ls::client();
    ls::wait_serving(&c, &server, "m", 2).await;
    assert!(!ls::mappings_under(&v2).is_empty());
    publish(&src, &model_dir, None).unwrap();
    ls::wait_serving(&c, &server, "m", 3).await;
    for u in 0..5 {
        let r = c
            .post(server.url("/v1/rank"))
            .json(&ls::body(u))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    ls::wait_until(10, "version 2's mappings to disappear", || async {
        ls::mappings_under(&v2).is_empty()
    })
    .await;
    assert!(!ls::mappings_under(&model_dir.join("3")).is_empty());
    server.stop().await;
}

#[test]
fn publish_command_verifies_then_renames_atomically() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let src = ls::source(scratch.path(), "m", 24);
    let bin = env!("CARGO_BIN_EXE_prerank");
    let model_dir = root.path().join("m");

    // Default version: one above the highest (1 into an empty directory, then 2).
    for want in [1u64, 2] {
        let out = std::process::Command::new(bin)
            .args(["publish"])
            .arg(&src)
            .arg(&model_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.trim(),
            model_dir.join(want.to_string()).to_string_lossy()
        );
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(model_dir.join(want.to_string()).join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["version"], want);
    }
    // An explicit version that exists is refused; so is a corrupt source or another model's dir.
    let exists = std::process::Command::new(bin)
        .args(["publish", "--version", "2"])
        .arg(&src)
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(!exists.status.success());
    assert!(String::from_utf8_lossy(&exists.stderr).contains("already exists"));

    let bad = scratch.path().join("bad").join("m").join("1");
    copy_dir(&src, &bad);
    ls::corrupt(&bad.join("items.f32.vec"));
    let out = std::process::Command::new(bin)
        .arg("publish")
        .arg(&bad)
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin)
        .arg("publish")
        .arg(&src)
        .arg(root.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Nothing half-written is left behind.
    let left: Vec<String> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, vec!["1".to_string(), "2".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_alone_and_polling_alone_each_discover_new_versions() {
    let scratch = tempfile::tempdir().unwrap();
    let src = ls::source(scratch.path(), "m", 25);
    let c = ls::client();
    for (watch, poll) in [(true, 0u64), (false, 1u64)] {
        let root = tempfile::tempdir().unwrap();
        let model_dir = root.path().join("m");
        publish(&src, &model_dir, Some(1)).unwrap();
        let server = ls::start(root.path(), false, |cfg| {
            cfg.no_watch = !watch;
            cfg.poll_seconds = poll;
        })
        .await;
        ls::wait_serving(&c, &server, "m", 1).await;
        publish(&src, &model_dir, None).unwrap();
        let t = Instant::now();
        ls::wait_serving(&c, &server, "m", 2).await;
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "watch={watch} poll={poll}: took {:?}",
            t.elapsed()
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_warmup_request_runs_before_the_swap_and_can_reject_a_version() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let src = ls::source(scratch.path(), "m", 26);
    publish(&src, &root.path().join("m"), Some(1)).unwrap();
    let good = scratch.path().join("warmup.json");
    std::fs::write(&good, ls::body_with(7, &ls::item_ids(&src)).to_string()).unwrap();
    let bad = scratch.path().join("bad-warmup.json");
    std::fs::write(
        &bad,
        r#"{"user": {"features": {"age": "old"}}, "candidates": [1], "k": 1}"#,
    )
    .unwrap();
    let c = ls::client();

    let server = ls::start(root.path(), false, |cfg| {
        cfg.warmup_request = Some(good.clone());
        cfg.warmup_rounds = 3;
    })
    .await;
    ls::wait_serving(&c, &server, "m", 1).await;
    server.stop().await;

    // A warm-up that fails is a failed load: the version is never served.
    let server = ls::start(root.path(), false, |cfg| {
        cfg.warmup_request = Some(bad.clone())
    })
    .await;
    ls::wait_until(20, "version 1 to fail its warm-up", || async {
        ls::state(&c, &server, "m", 1).await == "failed"
    })
    .await;
    let m = ls::models(&c, &server).await;
    assert!(
        m["models"][0]["versions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("warm-up request failed"),
        "{m}"
    );
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        503
    );
    server.stop().await;

    // An unreadable warm-up request is a start-up error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = prerank::server::ServeConfig::with_root(root.path().to_path_buf());
    cfg.warmup_request = Some(scratch.path().join("missing.json"));
    assert!(prerank::server::run(cfg, listener, async {}).await.is_err());
}

/// Flips the lowest mantissa bit of the last row's first f32 in `items.f32.vec`: the file keeps its
/// size, header, row norms and golden scores (the structural checks a deferred load runs pass), but
/// its sha256 (checked in the background) does not match the manifest.
fn flip_inside_a_row(dir: &std::path::Path) {
    let file = dir.join("items.f32.vec");
    let mut b = std::fs::read(&file).unwrap();
    let count = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    let stride = u32::from_le_bytes(b[28..32].try_into().unwrap()) as usize;
    let data = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    b[data + (count - 1) * stride] ^= 0x01;
    std::fs::write(&file, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_deferred_verification_is_failed_and_the_previous_one_serves_again() {
    const M: &str = "deferred";
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join(M);
    let src = ls::source(scratch.path(), M, 27);
    let ids = ls::item_ids(&src);
    publish(&src, &model_dir, Some(1)).unwrap();

    let server = ls::start(root.path(), false, |cfg| {
        cfg.verify = prerank::server::VerifyMode::Deferred;
    })
    .await;
    let c = ls::client();
    ls::wait_serving(&c, &server, M, 1).await;

    // Clients rank back to back for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for worker in 0..2u64 {
        let (c, url, ids) = (c.clone(), server.url("/v1/rank"), ids.clone());
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        clients.push(tokio::spawn(async move {
            let mut versions = BTreeSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match c
                    .post(&url)
                    .json(&ls::body_with(worker * 1_000_000 + n, &ids))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        versions.insert(v["version"].as_u64().unwrap());
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{status}: {text}"));
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
            (n, versions)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Version 2: complete, structurally sound, one flipped bit inside a row; renamed in atomically.
    let side = scratch.path().join("side").join(M);
    let (s, d) = (src.clone(), side.clone());
    let bad = tokio::task::spawn_blocking(move || publish(&s, &d, Some(2)).unwrap())
        .await
        .unwrap();
    flip_inside_a_row(&bad);
    std::fs::rename(&bad, model_dir.join("2")).unwrap();

    ls::wait_until(
        30,
        "version 2 to fail its deferred verification",
        || async { ls::state(&c, &server, M, 2).await == "failed" },
    )
    .await;
    let m = ls::models(&c, &server).await;
    let entry = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == M)
        .unwrap();
    let reason = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("deferred verification") && reason.contains("items.f32.vec"),
        "{reason}"
    );
    assert!(reason.contains("sha256"), "{reason}");
    ls::wait_serving(&c, &server, M, 1).await;
    for u in 0..5 {
        let r: serde_json::Value = c
            .post(server.url("/v1/rank"))
            .json(&ls::body_with(u, &ids))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["version"], 1, "{r}");
    }
    // Not retried by later scans (poll every second).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(ls::state(&c, &server, M, 2).await, "failed");
    assert_eq!(ls::serving(&c, &server, M).await, Some(1));

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for h in clients {
        let (n, versions) = h.await.unwrap();
        total += n;
        assert!(versions.is_subset(&BTreeSet::from([1, 2])), "{versions:?}");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "non-2xx responses: {failures:?}");
    assert!(total > 20, "only {total} requests");

    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("prerank_model_deferred_verify_total")
                && l.contains("model=\"deferred\"")
                && l.contains("result=\"failed\"")),
        "{metrics}"
    );
    assert!(metrics.contains("prerank_model_live_version{model=\"deferred\"} 1"));
    server.stop().await;
}
