//! The protobuf encoding of `POST /v1/rank` (proto/prerank/v1/rank.proto, docs/api.md "Protobuf"), on
//! a real server on a real socket: the same request in protobuf and JSON gives the same ranking and
//! counters; `Accept` picks the response encoding in all four combinations; every error class gives
//! the status and stable code JSON gives, as a protobuf `ErrorBody` when protobuf was negotiated.
//! Plus one in-process check that overload shedding happens before the body is read and decoded.

mod common;

use std::collections::BTreeMap;

use common::reference::Reference;
use prerank::api::{BehaviorJson, RankRequest, RankResponse, UserJson};
use prerank::proto::{self, pb};
use prerank_format::Dtype;
use prost::Message;
use serde_json::{json, Value};

const PB: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// What came back: status, content type, body bytes.
struct Reply {
    status: u16,
    ctype: String,
    body: Vec<u8>,
}

impl Reply {
    /// (code, message) of an error body in the encoding its content type says.
    fn error(&self) -> (String, String) {
        if self.ctype == PB {
            let e = pb::ErrorBody::decode(self.body.as_slice())
                .unwrap_or_else(|e| panic!("not a protobuf ErrorBody ({e}): {:?}", self.body));
            (e.code, e.message)
        } else {
            assert_eq!(self.ctype, JSON, "error content type");
            let v: Value = serde_json::from_slice(&self.body).unwrap();
            (
                v["error"]["code"].as_str().unwrap().to_string(),
                v["error"]["message"].as_str().unwrap().to_string(),
            )
        }
    }

    fn response(&self) -> RankResponse {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        if self.ctype == PB {
            proto::response_from_pb(pb::RankResponse::decode(self.body.as_slice()).unwrap())
        } else {
            assert_eq!(self.ctype, JSON);
            serde_json::from_slice(&self.body).unwrap()
        }
    }
}

async fn post(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    ctype: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut req = client.post(format!("http://{addr}/v1/rank")).body(body);
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await.unwrap().to_vec();
    Reply {
        status,
        ctype,
        body,
    }
}

fn request(ids: &[u64]) -> RankRequest {
    let mut features = BTreeMap::new();
    features.insert("age".to_string(), json!(33));
    features.insert("gender".to_string(), json!("f"));
    features.insert("city_tier".to_string(), json!(2));
    features.insert("not_a_model_feature".to_string(), json!(true));
    let behavior = |item_id: u64, fields: Value| BehaviorJson {
        item_id,
        fields: serde_json::from_value(fields).unwrap(),
    };
    let mut candidates: Vec<u64> = ids.iter().step_by(3).copied().collect();
    candidates.extend([1, 2, 3]); // unknown
    candidates.push(ids[0]); // duplicate
    RankRequest {
        request_id: Some("same-request".into()),
        user: UserJson {
            id: Some(json!(4242)),
            features,
            behaviors: vec![
                behavior(
                    ids[3],
                    json!({"action": "click", "seconds_ago": 120, "dwell_seconds": 14.5}),
                ),
                behavior(ids[7], json!({"action": "buy", "seconds_ago": 7200})),
                behavior(5, json!({"action": "cart", "category": 3, "brand": null})),
                behavior(ids[11], json!({})),
            ],
        },
        candidates,
        k: 40,
        model: None,
        with_probability: true,
        bucket: None,
    }
}

struct Server {
    _root: tempfile::TempDir,
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    ids: Vec<u64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Server {
    let (root, dir) = common::model_root(2_000, &[Dtype::F32]);
    let ids = Reference::open(&dir).ids();
    let (addr, stop, _handle) = common::spawn_server(root.path()).await;
    let client = reqwest::Client::new();
    common::wait_ready(&client, addr).await;
    Server {
        _root: root,
        addr,
        client,
        ids,
        _stop: stop,
    }
}

#[tokio::test]
async fn protobuf_and_json_give_the_same_ranking() {
    let s = server().await;
    let req = request(&s.ids);
    let json_body = serde_json::to_vec(&req).unwrap();
    let pb_body = proto::encode_request(&req).unwrap();
    assert!(pb_body.len() < json_body.len());
    let from_json = post(&s.client, s.addr, Some(JSON), None, json_body)
        .await
        .response();
    let from_pb = post(&s.client, s.addr, Some(PB), None, pb_body)
        .await
        .response();
    assert_eq!(from_pb.items.len(), 40);
    assert_eq!(
        from_pb.items, from_json.items,
        "same items, scores, probabilities"
    );
    assert!(from_pb.items.iter().all(|i| i.probability.is_some()));
    let counters = |r: &RankResponse| {
        (
            r.request_id.clone(),
            r.bucket.clone(),
            r.model.clone(),
            r.version,
            r.candidates,
            r.unknown_candidates,
            r.unknown_candidate_ids.clone(),
            r.duplicate_candidates,
            r.ignored_features.clone(),
            r.dtype.clone(),
        )
    };
    assert_eq!(counters(&from_pb), counters(&from_json));
    assert_eq!(from_pb.unknown_candidates, 3);
    assert_eq!(from_pb.unknown_candidate_ids, vec![1, 2, 3]);
    assert_eq!(from_pb.duplicate_candidates, 1);
    assert_eq!(from_pb.ignored_features, vec!["not_a_model_feature"]);
    assert_eq!(from_pb.request_id, "same-request");
}

#[tokio::test]
async fn accept_picks_the_response_encoding() {
    let s = server().await;
    let req = request(&s.ids);
    let bodies = [
        (JSON, serde_json::to_vec(&req).unwrap()),
        (PB, proto::encode_request(&req).unwrap()),
    ];
    let mut rankings = Vec::new();
    for (ctype, body) in &bodies {
        // No Accept (or a wildcard, or both): the request's encoding.
        for accept in [
            None,
            Some("*/*"),
            Some("application/json, application/x-protobuf"),
        ] {
            let r = post(&s.client, s.addr, Some(ctype), accept, body.clone()).await;
            assert_eq!(r.ctype, *ctype, "{ctype} with Accept {accept:?}");
            rankings.push(r.response().items);
        }
        // Exactly one encoding named: that one.
        for want in [
            JSON,
            PB,
            "application/protobuf",
            "application/json; charset=utf-8",
        ] {
            let r = post(&s.client, s.addr, Some(ctype), Some(want), body.clone()).await;
            let expect = if want.contains("protobuf") { PB } else { JSON };
            assert_eq!(r.ctype, expect, "{ctype} with Accept {want}");
            rankings.push(r.response().items);
        }
    }
    // The other protobuf media types are accepted as request types too.
    for ctype in [
        "application/protobuf",
        "application/vnd.google.protobuf; proto=x",
    ] {
        let r = post(&s.client, s.addr, Some(ctype), None, bodies[1].1.clone()).await;
        assert_eq!(r.ctype, PB);
        rankings.push(r.response().items);
    }
    assert!(rankings.windows(2).all(|w| w[0] == w[1]));
}

/// One error class: the JSON body and the protobuf body of the same mistake, the expected status
/// and code (the same for both unless `pb_code` differs, as for undecodable bytes).
struct Case {
    name: &'static str,
    json: Vec<u8>,
    pb: Vec<u8>,
    status: u16,
    code: &'static str,
    pb_code: &'static str,
    /// Whether both encodings must give the very same message (shared validation).
    same_message: bool,
}

fn case(name: &'static str, req: &RankRequest, status: u16, code: &'static str) -> Case {
    Case {
        name,
        json: serde_json::to_vec(req).unwrap(),
        pb: proto::encode_request(req).unwrap(),
        status,
        code,
        pb_code: code,
        same_message: true,
    }
}

#[tokio::test]
async fn every_error_class_has_the_json_status_and_code() {
    let s = server().await;
    let good = request(&s.ids);
    let with = |f: &dyn Fn(&mut RankRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let good_pb = proto::encode_request(&good).unwrap();
    let mut cases = vec![
        case("k = 0", &with(&|r| r.k = 0), 422, "invalid_k"),
        case("k < 0", &with(&|r| r.k = -5), 422, "invalid_k"),
        case("k too large", &with(&|r| r.k = 10_001), 422, "invalid_k"),
        case(
            "empty candidates",
            &with(&|r| r.candidates.clear()),
            422,
            "empty_candidates",
        ),
        case(
            "too many candidates",
            &with(&|r| r.candidates = vec![7; 200_001]),
            422,
            "too_many_candidates",
        ),
        case(
            "unknown model",
            &with(&|r| r.model = Some("nope".into())),
            404,
            "model_not_found",
        ),
        case(
            "too many behaviours",
            &with(&|r| {
                r.user.behaviors = (0..1_001)
                    .map(|i| BehaviorJson {
                        item_id: i,
                        fields: BTreeMap::new(),
                    })
                    .collect()
            }),
            422,
            "too_many_behaviors",
        ),
        case(
            "feature of the wrong type",
            &with(&|r| {
                r.user.features.insert("age".into(), json!("old"));
            }),
            422,
            "invalid_feature",
        ),
        case(
            "behaviour field of the wrong type",
            &with(&|r| {
                r.user.behaviors[0]
                    .fields
                    .insert("seconds_ago".into(), json!("yesterday"));
            }),
            422,
            "invalid_feature",
        ),
        case(
            "user id twice",
            &with(&|r| {
                r.user.features.insert("user_id".into(), json!(1));
            }),
            422,
            "invalid_feature",
        ),
    ];
    // Undecodable bytes: 400 either way, each encoding with its own code.
    let garbage = |name, pb: Vec<u8>| Case {
        name,
        json: b"{\"user\": {}, \"candidates\": [1, 2".to_vec(),
        pb,
        status: 400,
        code: "malformed_json",
        pb_code: "malformed_protobuf",
        same_message: false,
    };
    cases.push(garbage("malformed bytes", vec![0xff; 32]));
    cases.push(garbage(
        "truncated message",
        good_pb[..good_pb.len() / 2].to_vec(),
    ));
    // Field 3 (candidates) as a varint: neither packed nor fixed64.
    cases.push(garbage("wrong wire type", vec![3 << 3, 5]));
    // A field that is not UTF-8 where a string is expected.
    cases.push(garbage("invalid utf-8", vec![(5 << 3) | 2, 2, 0xc3, 0x28]));
    // Shapes JSON can also get wrong: 422 invalid_request with the JSON wording.
    let no_k = pb::RankRequest {
        k: None,
        ..proto::request_to_pb(&good).unwrap()
    };
    let mut no_k_json: serde_json::Map<String, Value> =
        serde_json::from_slice(&serde_json::to_vec(&good).unwrap()).unwrap();
    no_k_json.remove("k");
    cases.push(Case {
        name: "missing k",
        json: serde_json::to_vec(&no_k_json).unwrap(),
        pb: no_k.encode_to_vec(),
        status: 422,
        code: "invalid_request",
        pb_code: "invalid_request",
        same_message: false,
    });
    // A feature value JSON cannot carry (array) vs a protobuf FeatureValue with no case set.
    let mut unset = proto::request_to_pb(&good).unwrap();
    if let Some(u) = unset.user.as_mut() {
        u.features
            .insert("gender".into(), pb::FeatureValue { kind: None });
    }
    cases.push(Case {
        name: "feature value of no scalar kind",
        json: serde_json::to_vec(&with(&|r| {
            r.user.features.insert("gender".into(), json!([1]));
        }))
        .unwrap(),
        pb: unset.encode_to_vec(),
        status: 422,
        code: "invalid_feature",
        pb_code: "invalid_feature",
        same_message: false,
    });

    for c in &cases {
        let j = post(&s.client, s.addr, Some(JSON), None, c.json.clone()).await;
        let (jcode, jmsg) = j.error();
        assert_eq!(
            (j.status, jcode.as_str()),
            (c.status, c.code),
            "{}: JSON",
            c.name
        );
        // Protobuf request, protobuf error body.
        let p = post(&s.client, s.addr, Some(PB), None, c.pb.clone()).await;
        assert_eq!(p.ctype, PB, "{}: protobuf error content type", c.name);
        let (pcode, pmsg) = p.error();
        assert_eq!(
            (p.status, pcode.as_str()),
            (c.status, c.pb_code),
            "{}: protobuf ({pmsg})",
            c.name
        );
        assert!(!pmsg.is_empty());
        if c.same_message {
            assert_eq!(pmsg, jmsg, "{}: same message", c.name);
        }
        // Protobuf request, JSON asked for: the same error as JSON.
        let pj = post(&s.client, s.addr, Some(PB), Some(JSON), c.pb.clone()).await;
        assert_eq!(pj.ctype, JSON, "{}", c.name);
        assert_eq!(
            (pj.status, pj.error()),
            (p.status, (pcode, pmsg)),
            "{}",
            c.name
        );
    }

    // Undecodable protobuf names what failed.
    let r = post(&s.client, s.addr, Some(PB), None, vec![3 << 3, 5]).await;
    let (_, msg) = r.error();
    assert!(msg.contains("RankRequest.candidates"), "{msg}");
    assert!(msg.contains("wire type"), "{msg}");

    // 415: a content type that is neither; the error follows Accept, JSON by default.
    let r = post(&s.client, s.addr, Some("text/plain"), None, good_pb.clone()).await;
    assert_eq!(
        (r.status, r.error().0.as_str()),
        (415, "unsupported_media_type")
    );
    assert_eq!(r.ctype, JSON);
    let r = post(
        &s.client,
        s.addr,
        Some("text/plain"),
        Some(PB),
        good_pb.clone(),
    )
    .await;
    assert_eq!((r.status, r.ctype.as_str()), (415, PB));
    assert_eq!(r.error().0, "unsupported_media_type");

    // And the server still serves.
    let r = post(&s.client, s.addr, Some(PB), None, good_pb).await;
    assert_eq!(r.response().items.len(), 40);
}

#[tokio::test]
async fn request_id_header_is_echoed_for_protobuf() {
    let s = server().await;
    let mut req = request(&s.ids);
    req.request_id = None;
    let resp = s
        .client
        .post(format!("http://{}/v1/rank", s.addr))
        .header("content-type", PB)
        .header("x-request-id", "from-header-1")
        .body(proto::encode_request(&req).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "from-header-1");
    let body = resp.bytes().await.unwrap();
    let r = pb::RankResponse::decode(body.as_ref()).unwrap();
    assert_eq!(r.request_id, "from-header-1");
}

/// Overload shedding comes before the body is read: with no permits, even an undecodable body is
/// refused with 503 `overloaded` (not 400), in the negotiated encoding, with `Retry-After`.
#[tokio::test]
async fn overload_is_shed_before_the_body_is_decoded() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (root, _dir) = common::model_root(200, &[Dtype::F32]);
    let limits = prerank::http::Limits {
        max_inflight: 0,
        ..Default::default()
    };
    let app = common::app(root.path(), limits);
    for (ctype, body) in [(JSON, b"{not json".to_vec()), (PB, vec![0xff; 8])] {
        let req = axum::http::Request::post("/v1/rank")
            .header("content-type", ctype)
            .body(Body::from(body))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["content-type"], ctype);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let r = Reply {
            status: 503,
            ctype: ctype.to_string(),
            body: bytes,
        };
        assert_eq!(r.error().0, "overloaded");
    }
}

/// `prerank bodies`: the interface the load-test scripts call. Each pair is the same request in both
/// encodings, drawn from the snapshot's ids, deterministic from the seed.
#[test]
fn bodies_command_writes_matching_pairs() {
    let (_root, dir) = common::model_root(500, &[Dtype::F32]);
    let ids: std::collections::BTreeSet<u64> = Reference::open(&dir).ids().into_iter().collect();
    let out = tempfile::tempdir().unwrap();
    let run = |seed: &str, sub: &str| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_prerank"))
            .arg("bodies")
            .arg(&dir)
            .args(["--candidates", "300", "--count", "3", "--behaviors", "7"])
            .args(["--k", "20", "--seed", seed, "--out-dir"])
            .arg(out.path().join(sub))
            .status()
            .unwrap();
        assert!(status.success());
    };
    run("5", "a");
    run("5", "b");
    run("6", "c");
    for i in 0..3 {
        let read = |sub: &str, ext: &str| {
            std::fs::read(out.path().join(sub).join(format!("body-{i}.{ext}"))).unwrap()
        };
        let json: RankRequest = prerank::api::parse_json(&read("a", "json")).unwrap();
        let pb = proto::decode_request(&read("a", "pb")).unwrap();
        // Exactly equal, floats included: serde_json's `float_roundtrip` feature (enabled in the
        // workspace) parses a decimal to the nearest double, the one the protobuf body carries.
        assert_eq!(
            serde_json::to_value(&json).unwrap(),
            serde_json::to_value(&pb).unwrap(),
            "body-{i}: the two encodings carry the same request"
        );
        assert_eq!(
            (json.candidates.len(), json.user.behaviors.len(), json.k),
            (300, 7, 20)
        );
        assert!(json.candidates.iter().all(|c| ids.contains(c)));
        assert!(json.user.behaviors.iter().all(|b| ids.contains(&b.item_id)));
        assert_eq!(read("a", "pb"), read("b", "pb"), "same seed, same bytes");
        assert_eq!(read("a", "json"), read("b", "json"));
        assert_ne!(
            read("a", "pb"),
            read("c", "pb"),
            "another seed, other requests"
        );
    }
    assert!(!out.path().join("a/body-3.json").exists());
}

/// The permit is held while the body is read, and the read counts against the request deadline: a
/// client trickling its body makes others get 503 `overloaded` while it holds the only permit, gets
/// 504 `timeout` at the deadline, and then the permit is free again.
#[tokio::test]
async fn a_slow_body_holds_the_permit_only_until_the_deadline() {
    use std::io::{Read, Write};
    let (root, dir) = common::model_root(200, &[Dtype::F32]);
    let id = Reference::open(&dir).ids()[0];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut cfg = prerank::server::ServeConfig::with_root(root.path().to_path_buf());
    cfg.poll_seconds = 1;
    cfg.max_inflight = 1;
    cfg.request_timeout_ms = 1_000;
    let handle = tokio::spawn(prerank::server::run(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    common::wait_ready(&client, addr).await;

    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // 500 bytes announced, 11 sent, the connection left open.
        s.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"user\": {}")
            .unwrap();
        let started = std::time::Instant::now();
        let mut out = [0u8; 4096];
        let n = s.read(&mut out).unwrap_or(0);
        (
            String::from_utf8_lossy(&out[..n]).into_owned(),
            started.elapsed(),
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let good = json!({"user": {}, "candidates": [id], "k": 1});
    let busy = client
        .post(format!("http://{addr}/v1/rank"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    let v: Value = busy.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    let (reply, waited) = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    assert!(reply.contains("\"timeout\""), "{reply}");
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    let ok = client
        .post(format!("http://{addr}/v1/rank"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
