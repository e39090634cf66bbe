//! The admin API on a real server: token required (401), rollback / pin / unpin / unload / load,
//! a corrupt version refused, traversal and malformed names rejected, admin off without a token.

mod lifecycle_support;

use lifecycle_support as ls;
use prerank::publish::publish;
use reqwest::StatusCode;
use serde_json::Value;

async fn admin(
    c: &reqwest::Client,
    s: &ls::Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = c.request(method, s.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn admin_get(c: &reqwest::Client, s: &ls::Server, token: &str) -> (StatusCode, Value) {
    admin(c, s, reqwest::Method::GET, "/admin/v1/models", Some(token)).await
}

async fn post(c: &reqwest::Client, s: &ls::Server, path: &str) -> (StatusCode, Value) {
    admin(c, s, reqwest::Method::POST, path, Some(ls::TOKEN)).await
}

async fn rank_version(c: &reqwest::Client, s: &ls::Server) -> (StatusCode, Value) {
    let r = c
        .post(s.url("/v1/rank"))
        .json(&ls::body(7))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_pin_unpin_unload_load_with_token_only() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join("m");
    let src = ls::source(scratch.path(), "m", 31);
    for v in 1..=3 {
        publish(&src, &model_dir, Some(v)).unwrap();
    }
    let server = ls::start(root.path(), true, |_| {}).await;
    let c = ls::client();
    ls::wait_serving(&c, &server, "m", 3).await;

    // No token, a wrong token, another scheme, an unknown route: all 401, nothing changes.
    for (path, token) in [
        ("/admin/v1/models/m/rollback", None),
        ("/admin/v1/models/m/rollback", Some("wrong")),
        ("/admin/v1/models/m/rollback", Some("")),
        ("/admin/v1/nope", None),
    ] {
        let (s, body) = admin(&c, &server, reqwest::Method::POST, path, token).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} {token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let r = c
        .post(server.admin_url("/admin/v1/models/m/rollback"))
        .header("authorization", format!("Basic {}", ls::TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ls::serving(&c, &server, "m").await, Some(3));
    // The admin API is not on the ranking listener.
    let r = c
        .post(server.url("/admin/v1/models/m/rollback"))
        .bearer_auth(ls::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // List.
    let (s, list) = admin(
        &c,
        &server,
        reqwest::Method::GET,
        "/admin/v1/models",
        Some(ls::TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["models"][0]["name"], "m");
    assert_eq!(list["models"][0]["policy"], "latest");
    assert_eq!(list["models"][0]["serving"], 3);
    assert_eq!(list["models"][0]["versions"].as_array().unwrap().len(), 3);

    // Rollback: 3 -> 2 -> 1, then nothing older.
    let (s, r) = post(&c, &server, "/admin/v1/models/m/rollback").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["policy"].as_str(),
            r["version"].as_u64(),
            r["serving"].as_u64()
        ),
        (Some("pinned"), Some(2), Some(2))
    );
    assert_eq!(rank_version(&c, &server).await.1["version"], 2);
    let (_, r) = post(&c, &server, "/admin/v1/models/m/rollback").await;
    assert_eq!(r["serving"], 1);
    let (s, r) = post(&c, &server, "/admin/v1/models/m/rollback").await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_previous_version"))
    );
    assert_eq!(ls::serving(&c, &server, "m").await, Some(1));

    // Pinned: a newer publish is not picked up while pinned...
    publish(&src, &model_dir, Some(4)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(ls::serving(&c, &server, "m").await, Some(1));
    // ...pin 3 explicitly, then unpin returns to latest (4).
    let (s, r) = post(&c, &server, "/admin/v1/models/m/versions/3/pin").await;
    assert_eq!((s, r["serving"].as_u64()), (StatusCode::OK, Some(3)), "{r}");
    let (s, r) = post(&c, &server, "/admin/v1/models/m/unpin").await;
    assert_eq!(
        (s, r["serving"].as_u64(), r["policy"].as_str()),
        (StatusCode::OK, Some(4), Some("latest"))
    );

    // A corrupt version: pin refused with the reason, the current version keeps serving.
    let side = publish(&src, &scratch.path().join("side").join("m"), Some(5)).unwrap();
    ls::corrupt(&side.join("items.f32.vec"));
    std::fs::rename(&side, model_dir.join("5")).unwrap();
    ls::wait_until(20, "version 5 to fail", || async {
        ls::state(&c, &server, "m", 5).await == "failed"
    })
    .await;
    let (s, r) = post(&c, &server, "/admin/v1/models/m/versions/5/pin").await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_failed")),
        "{r}"
    );
    assert!(r["error"]["message"].as_str().unwrap().contains("sha256"));
    assert_eq!(ls::serving(&c, &server, "m").await, Some(4));
    let (s, r) = post(&c, &server, "/admin/v1/models/m/versions/99/pin").await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("version_not_found"))
    );

    // Unload: not served, not ready; load brings it back (latest), load of a version pins it.
    let (s, r) = post(&c, &server, "/admin/v1/models/m/unload").await;
    assert_eq!(
        (s, r["unloaded"].as_bool(), r["serving"].as_u64()),
        (StatusCode::OK, Some(true), None)
    );
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        rank_version(&c, &server).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // a poll must not reload it
    assert_eq!(ls::serving(&c, &server, "m").await, None);
    let (s, r) = post(&c, &server, "/admin/v1/models/m/load").await;
    assert_eq!((s, r["serving"].as_u64()), (StatusCode::OK, Some(4)), "{r}");
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let (s, r) = post(&c, &server, "/admin/v1/models/m/versions/2/load").await;
    assert_eq!(
        (s, r["serving"].as_u64(), r["policy"].as_str()),
        (StatusCode::OK, Some(2), Some("pinned"))
    );
    assert_eq!(rank_version(&c, &server).await.1["version"], 2);

    // Status shows the policy; /v1/models shows per-version states.
    let (_, one) = admin(
        &c,
        &server,
        reqwest::Method::GET,
        "/admin/v1/models/m",
        Some(ls::TOKEN),
    )
    .await;
    assert_eq!(one["version"], 2);
    assert_eq!(ls::state(&c, &server, "m", 5).await, "failed");
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("prerank_admin_requests_total{op=\"rollback\",status=\"200\"}"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_malformed_names_are_rejected() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let src = ls::source(scratch.path(), "m", 32);
    publish(&src, &root.path().join("m"), Some(1)).unwrap();
    let server = ls::start(root.path(), true, |_| {}).await;
    let c = ls::client();
    ls::wait_serving(&c, &server, "m", 1).await;

    for (path, code, status) in [
        ("/admin/v1/models/..%2F..%2Fetc/unload", "invalid_name", 400),
        ("/admin/v1/models/..%2Fm/rollback", "invalid_name", 400),
        ("/admin/v1/models/.hidden/load", "invalid_name", 400),
        ("/admin/v1/models/m%00/load", "invalid_name", 400),
        (
            "/admin/v1/models/m/versions/..%2F1/pin",
            "invalid_name",
            400,
        ),
        ("/admin/v1/models/m/versions/01/pin", "invalid_name", 400),
        ("/admin/v1/models/m/versions/0/pin", "invalid_name", 400),
        ("/admin/v1/models/m/versions/-1/load", "invalid_name", 400),
        (
            "/admin/v1/models/m/versions/18446744073709551616/pin",
            "invalid_name",
            400,
        ),
        ("/admin/v1/models/nope/load", "model_not_found", 404),
    ] {
        let (s, r) = post(&c, &server, path).await;
        assert_eq!(
            (s.as_u16(), r["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {r}"
        );
    }
    // A raw `..` segment (clients normalise it; send it unnormalised by hand).
    let admin_addr = server.admin.unwrap();
    let resp = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(admin_addr).unwrap();
        let req = format!(
            "POST /admin/v1/models/../unload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ls::TOKEN
        );
        sock.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        sock.read_to_string(&mut resp).unwrap();
        resp
    })
    .await
    .unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 404"),
        "{resp}"
    );
    assert_eq!(ls::serving(&c, &server, "m").await, Some(1));
    server.stop().await;
}

#[tokio::test]
async fn admin_listener_without_a_token_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = prerank::server::ServeConfig::with_root(root.path().to_path_buf());
    let err = prerank::server::run_with_admin(cfg, listener, Some(admin), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("admin API needs a token"), "{err}");
    // An empty token file is no token; a token file with the token works (whitespace trimmed).
    let empty = root.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = prerank::server::ServeConfig::with_root(root.path().to_path_buf());
    cfg.admin_token_file = Some(empty);
    let err = prerank::server::run_with_admin(cfg, listener, Some(admin), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("admin API needs a token"), "{err}");
    let file = root.path().join("token");
    std::fs::write(&file, format!("{}\n", lifecycle_support::TOKEN)).unwrap();
    let server = lifecycle_support::start(root.path(), true, |c| {
        c.admin_token = None;
        c.admin_token_file = Some(file.clone());
    })
    .await;
    let c = lifecycle_support::client();
    let (s, _) = admin_get(&c, &server, lifecycle_support::TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = admin_get(&c, &server, "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    server.stop().await;
    // And the token never shows in the config's Debug output.
    let mut cfg = prerank::server::ServeConfig::with_root(root.path().to_path_buf());
    cfg.admin_token = Some(prerank::server::Secret::new("s3cret-value"));
    assert!(!format!("{cfg:?}").contains("s3cret-value"));
}
