//! The HTTP contract (docs/api.md): ranking correctness against an independent implementation of the
//! spec, ordering and k, unknown and duplicate ids, every documented error, and the probes. Contract
//! tests drive the router in-process; the last tests run a real server on a port.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::reference::Reference;
use http_body_util::BodyExt;
use prerank::http::Limits;
use prerank_format::Dtype;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn rank(app: &axum::Router, body: &Value) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        "/v1/rank",
        Some("application/json"),
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

fn user(ids: &[u64]) -> Value {
    json!({
        "id": 4242,
        "features": {"age": 33, "gender": "f", "city_tier": 2, "not_a_model_feature": 1},
        "behaviors": [
            {"item_id": ids[3], "action": "click", "seconds_ago": 120, "dwell_seconds": 14.5},
            {"item_id": ids[7], "action": "buy", "seconds_ago": 7200},
            {"item_id": 5, "action": "cart", "category": 3},
            {"item_id": ids[11]}
        ]
    })
}

#[tokio::test]
async fn ranking_matches_independent_reference() {
    let (_root, dir) = common::model_root(3_000, &[Dtype::F32]);
    let app = common::app(_root.path(), Limits::default());
    let reference = Reference::open(&dir);
    let ids = reference.ids();
    let mut candidates: Vec<u64> = ids.iter().step_by(2).copied().collect();
    candidates.extend([1, 2, 3]); // unknown
    candidates.push(ids[0]); // duplicate of the first candidate
    let body = json!({"user": user(&ids), "candidates": candidates, "k": 50, "request_id": "r-1"});
    let (status, resp) = rank(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let want = reference.rank(&body["user"], &candidates);
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    for (i, item) in items.iter().enumerate() {
        let (id, score) = want[i];
        let got = item["score"].as_f64().unwrap();
        assert!(
            (got - score).abs() < 1e-4,
            "rank {i}: score {got} vs reference {score}"
        );
        // Equal ids unless the reference itself has a near-tie here.
        if item["item_id"].as_u64().unwrap() != id {
            assert!(
                (want[i + 1].1 - score).abs() < 1e-4
                    || (i > 0 && (want[i - 1].1 - score).abs() < 1e-4)
            );
        }
    }
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "scores must be descending"
    );
    assert_eq!(resp["request_id"], "r-1");
    assert_eq!(resp["model"], "m");
    assert_eq!(resp["version"], 1);
    assert_eq!(resp["candidates"], candidates.len());
    assert_eq!(resp["unknown_candidates"], 3);
    assert_eq!(resp["unknown_candidate_ids"], json!([1, 2, 3]));
    assert_eq!(resp["duplicate_candidates"], 1);
    assert_eq!(resp["ignored_features"], json!(["not_a_model_feature"]));
    assert_eq!(resp["dtype"], "f32");
}

#[tokio::test]
async fn k_larger_than_candidates_probability_and_empty_user() {
    let (root, dir) = common::model_root(1_000, &[Dtype::F32]);
    let app = common::app(root.path(), Limits::default());
    let ids = Reference::open(&dir).ids();
    // An empty user (no id, no features, no behaviours) is valid: every feature is missing.
    let body = json!({"user": {}, "candidates": &ids[..5], "k": 100, "with_probability": true});
    let (status, resp) = rank(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    for it in items {
        let s = it["score"].as_f64().unwrap();
        let p = it["probability"].as_f64().unwrap();
        assert!((p - 1.0 / (1.0 + (-s).exp())).abs() < 1e-6);
    }
    // Only unknown candidates: 200 with no items.
    let (status, resp) = rank(&app, &json!({"user": {}, "candidates": [1, 2], "k": 3})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["items"], json!([]));
    assert_eq!(resp["unknown_candidates"], 2);
    // More behaviours than max_len are truncated, not rejected.
    let many: Vec<Value> = (0..120)
        .map(|i| json!({"item_id": ids[i % ids.len()]}))
        .collect();
    let (status, _) = rank(
        &app,
        &json!({"user": {"behaviors": many}, "candidates": [ids[0]], "k": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn compact_dtypes_keep_recall() {
    let (root, dir) = common::model_root(4_000, &[Dtype::F32, Dtype::F16, Dtype::Int8]);
    let ids = Reference::open(&dir).ids();
    let body = json!({"user": user(&ids), "candidates": ids, "k": 200});
    let mut tops = Vec::new();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
        let registry = std::sync::Arc::new(prerank::registry::Registry::new(
            root.path(),
            None,
            prerank::snapshot::LoadOptions {
                dtype: Some(dtype),
                ..Default::default()
            },
        ));
        prerank::server::load_all(&registry);
        let app = prerank::http::router(prerank::http::AppState::new(registry, Limits::default()));
        let (status, resp) = rank(&app, &body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(resp["dtype"], dtype.name());
        let set: std::collections::HashSet<u64> = resp["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_u64().unwrap())
            .collect();
        tops.push(set);
    }
    for (name, t) in [("f16", &tops[1]), ("int8", &tops[2])] {
        let recall = t.intersection(&tops[0]).count() as f64 / 200.0;
        assert!(recall >= 0.95, "{name} top-200 recall {recall}");
    }
}

#[tokio::test]
async fn every_documented_error() {
    let (root, dir) = common::model_root(500, &[Dtype::F32]);
    let limits = Limits {
        max_candidates: 100,
        max_behaviors: 10,
        max_k: 50,
        max_body_bytes: 64 * 1024,
        max_inflight: 4,
    };
    let app = common::app(root.path(), limits);
    let ids = Reference::open(&dir).ids();
    let ok = json!({"user": {}, "candidates": [ids[0]], "k": 1});
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"user": {}, "candidates": [ids[0]], "k": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_k",
        ),
        (
            json!({"user": {}, "candidates": [ids[0]], "k": -3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_k",
        ),
        (
            json!({"user": {}, "candidates": [ids[0]], "k": 51}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_k",
        ),
        (
            json!({"user": {}, "candidates": [], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_candidates",
        ),
        (
            json!({"user": {}, "candidates": vec![ids[0]; 101], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_candidates",
        ),
        (
            json!({"user": {"behaviors": vec![json!({"item_id": 1}); 11]}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_behaviors",
        ),
        (
            json!({"user": {}, "candidates": ["x"], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {}, "candidates": [-1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {}, "candidates": [1.5], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {}, "candidates": [1], "k": "3"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {}, "candidates": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {}, "candidates": [1], "k": 1, "candidate": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {"behaviors": [{"action": "click"}]}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"user": {"features": {"age": "old"}}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feature",
        ),
        (
            json!({"user": {"features": {"gender": [1]}}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feature",
        ),
        (
            json!({"user": {"features": {"gender": 0.5}}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feature",
        ),
        (
            json!({"user": {"id": 1, "features": {"user_id": 2}}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feature",
        ),
        (
            json!({"user": {"behaviors": [{"item_id": 1, "seconds_ago": "yesterday"}]}, "candidates": [1], "k": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feature",
        ),
        (
            json!({"user": {}, "candidates": [1], "k": 1, "model": "nope"}),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let (got, resp) = rank(&app, &body).await;
        assert_eq!(
            (got, resp["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "body {body}: {resp}"
        );
        assert!(!resp["error"]["message"].as_str().unwrap().is_empty());
    }
    // Field paths are named.
    let (_, resp) = rank(
        &app,
        &json!({"user": {"behaviors": [{"item_id": "x"}]}, "candidates": [1], "k": 1}),
    )
    .await;
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user.behaviors[0].item_id"),
        "{resp}"
    );
    let (_, resp) = rank(
        &app,
        &json!({"user": {"features": {"age": "old"}}, "candidates": [1], "k": 1}),
    )
    .await;
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user.features.age"),
        "{resp}"
    );

    let raw = |b: &str| b.as_bytes().to_vec();
    let (s, r) = call(
        &app,
        "POST",
        "/v1/rank",
        Some("application/json"),
        raw("{\"user\": {"),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, r) = call(
        &app,
        "POST",
        "/v1/rank",
        Some("application/json"),
        raw("{\"user\": {}, \"k\": 1, \"candidates\": [1,2"),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, r) = call(
        &app,
        "POST",
        "/v1/rank",
        Some("application/json"),
        vec![0xff, 0xfe, b'{'],
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, r) = call(
        &app,
        "POST",
        "/v1/rank",
        Some("text/plain"),
        serde_json::to_vec(&ok).unwrap(),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let big = format!(
        "{{\"user\": {{}}, \"k\": 1, \"candidates\": [{}]}}",
        vec!["1"; 40_000].join(",")
    );
    let (s, r) = call(
        &app,
        "POST",
        "/v1/rank",
        Some("application/json"),
        big.into_bytes(),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let (s, r) = call(&app, "GET", "/v2/nothing", None, vec![]).await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // The server still serves after all of that.
    let (s, _) = rank(&app, &ok).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn probes_and_models_without_and_with_a_model() {
    let empty = tempfile::tempdir().unwrap();
    let app = common::app(empty.path(), Limits::default());
    let (s, _) = call(&app, "GET", "/healthz", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, r) = call(&app, "GET", "/readyz", None, vec![]).await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    let (s, r) = rank(&app, &json!({"user": {}, "candidates": [1], "k": 1})).await;
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_model")
    );

    let (root, _dir) = common::model_root(500, &[Dtype::F32, Dtype::Int8]);
    let app = common::app(root.path(), Limits::default());
    let (s, _) = call(&app, "GET", "/readyz", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, r) = call(&app, "GET", "/v1/models", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let m = &r["models"][0];
    assert_eq!(m["name"], "m");
    assert_eq!(m["live"]["version"], 1);
    assert_eq!(m["live"]["item_count"], 500);
    assert_eq!(m["live"]["dim"], 128);
    assert_eq!(m["live"]["dtypes"], json!(["f32", "int8"]));
    assert_eq!(m["versions"][0]["state"], "available");
    assert!(m["live"]["provenance"]["producer"]
        .as_str()
        .unwrap()
        .starts_with("prerank synth"));
}

#[tokio::test]
async fn corrupt_newer_version_is_rejected_and_reported_while_the_good_one_serves() {
    let (root, dir) = common::model_root(500, &[Dtype::F32]);
    // Version 2 is a copy of 1 with one flipped byte in the item vectors.
    let v2 = root.path().join("m").join("2");
    std::fs::create_dir(&v2).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), v2.join(e.file_name())).unwrap();
    }
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(v2.join("manifest.json")).unwrap()).unwrap();
    m["version"] = json!(2);
    std::fs::write(v2.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let vec_file = v2.join("items.f32.vec");
    let mut bytes = std::fs::read(&vec_file).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&vec_file, bytes).unwrap();

    let app = common::app(root.path(), Limits::default());
    let (_, r) = call(&app, "GET", "/v1/models", None, vec![]).await;
    let model = &r["models"][0];
    assert_eq!(model["live"]["version"], 1, "{r}");
    let v2_status = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap();
    assert_eq!(v2_status["state"], "failed");
    assert!(
        v2_status["reason"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{v2_status}"
    );
    let (s, r) = rank(
        &app,
        &json!({"user": {}, "candidates": [Reference::open(&dir).ids()[0]], "k": 1}),
    )
    .await;
    assert_eq!((s, r["version"].as_u64()), (StatusCode::OK, Some(1)));
}

#[tokio::test]
async fn real_server_serves_and_picks_up_a_new_version() {
    let (root, dir) = common::model_root(800, &[Dtype::F32]);
    let ids = Reference::open(&dir).ids();
    let (addr, shutdown, handle) = common::spawn_server(root.path()).await;
    let client = reqwest::Client::new();
    common::wait_ready(&client, addr).await;
    let body = json!({"user": {"id": "u-1"}, "candidates": &ids[..300], "k": 10});
    let resp: Value = client
        .post(format!("http://{addr}/v1/rank"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["version"], 1);
    assert_eq!(resp["items"].as_array().unwrap().len(), 10);

    // Publishing version 2 (atomically, via the writer) is picked up by the poller.
    prerank::synth::generate(
        &root.path().join("m").join("2"),
        &prerank::synth::SynthConfig {
            model: "m".into(),
            version: 2,
            items: 800,
            seed: 12,
            golden: 1,
            categories: 40,
            ..Default::default()
        },
    )
    .unwrap();
    let mut version = 1;
    for _ in 0..100 {
        let r: Value = client
            .get(format!("http://{addr}/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        version = r["models"][0]["live"]["version"].as_u64().unwrap();
        if version == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(version, 2);
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "prerank_requests_total{route=\"/v1/rank\",status=\"200\",model=\"m\",version=\"1\"}"
        ),
        "{metrics}"
    );
    shutdown.send(()).unwrap();
    handle.await.unwrap().unwrap();
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "server must be gone after shutdown"
    );
}
