//! Hostile and malformed requests: every one gets a 4xx with a stable error code and a message, the
//! process never panics, and a good request still succeeds afterwards. In-process for the body and
//! header cases, a real socket for the ones that only exist on the wire (truncated bodies, garbage).

mod common;

use std::io::{Read, Write};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::reference::Reference;
use http_body_util::BodyExt;
use prerank::http::Limits;
use prerank_format::Dtype;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn send(
    app: &axum::Router,
    method: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri("/v1/rank");
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
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// (name, content type, body, expected status, expected code or "" for any code)
type Case<'a> = (String, Option<&'a str>, Vec<u8>, u16, &'a str);

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn fifty_plus_hostile_requests_get_clear_4xx_and_the_server_keeps_serving() {
    let (root, dir) = common::model_root(400, &[Dtype::F32]);
    let limits = Limits {
        max_body_bytes: 1 << 20,
        ..Limits::default()
    };
    let app = common::app(root.path(), limits);
    let id = Reference::open(&dir).ids()[0];
    let good = json!({"user": {"id": 1}, "candidates": [id], "k": 1}).to_string();
    let with = |field: &str, v: &str| -> String {
        let mut m: serde_json::Map<String, Value> = serde_json::from_str(&good).unwrap();
        m.remove(field);
        let rest = Value::Object(m).to_string();
        format!("{{\"{field}\": {v}, {}", &rest[1..])
    };
    let user = |v: &str| format!("{{\"user\": {v}, \"candidates\": [{id}], \"k\": 1}}");
    let behavior = |v: &str| user(&format!("{{\"behaviors\": [{v}]}}"));
    let feature = |v: &str| user(&format!("{{\"features\": {{\"age\": {v}}}}}"));
    let j = "application/json";

    let mut cases: Vec<Case> = vec![
        ("empty body".into(), Some(j), vec![], 400, "malformed_json"),
        (
            "whitespace".into(),
            Some(j),
            b"   \n".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "truncated".into(),
            Some(j),
            good.as_bytes()[..good.len() - 3].to_vec(),
            400,
            "malformed_json",
        ),
        (
            "trailing garbage".into(),
            Some(j),
            format!("{good} x").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "two documents".into(),
            Some(j),
            format!("{good}{good}").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "NaN literal".into(),
            Some(j),
            with("k", "NaN").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "Infinity literal".into(),
            Some(j),
            feature("Infinity").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "single quotes".into(),
            Some(j),
            b"{'k': 1}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "comment".into(),
            Some(j),
            format!("// hi\n{good}").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "invalid utf-8 in string".into(),
            Some(j),
            [&b"{\"request_id\": \""[..], &[0xff, 0xfe], &b"\"}"[..]].concat(),
            400,
            "malformed_json",
        ),
        (
            "utf-8 BOM".into(),
            Some(j),
            [&[0xef, 0xbb, 0xbf][..], good.as_bytes()].concat(),
            400,
            "malformed_json",
        ),
        (
            "lone surrogate escape".into(),
            Some(j),
            with("request_id", "\"\\ud800\"").into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "deep nesting in a feature".into(),
            Some(j),
            feature(&nested(10_000)).into_bytes(),
            400,
            "",
        ),
        (
            "deep nesting at top level".into(),
            Some(j),
            nested(100_000).into_bytes(),
            422,
            "",
        ),
        (
            "top level array".into(),
            Some(j),
            b"[1, 2, 3]".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "top level string".into(),
            Some(j),
            b"\"rank\"".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "top level null".into(),
            Some(j),
            b"null".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "user is a string".into(),
            Some(j),
            user("\"bob\"").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "user is an array".into(),
            Some(j),
            user("[]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "user is null".into(),
            Some(j),
            user("null").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "unknown user field".into(),
            Some(j),
            user("{\"name\": 1}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidates is an object".into(),
            Some(j),
            with("candidates", "{\"a\": 1}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidates is a string".into(),
            Some(j),
            with("candidates", "\"1,2,3\"").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidates is null".into(),
            Some(j),
            with("candidates", "null").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidate as string".into(),
            Some(j),
            with("candidates", "[\"123\"]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidate negative".into(),
            Some(j),
            with("candidates", "[-5]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidate fractional".into(),
            Some(j),
            with("candidates", "[1.5]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidate above u64".into(),
            Some(j),
            with("candidates", "[18446744073709551616]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidate 1e999".into(),
            Some(j),
            with("candidates", "[1e999]").into_bytes(),
            400,
            "",
        ),
        (
            "candidate nested array".into(),
            Some(j),
            with("candidates", "[[1]]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "candidates empty".into(),
            Some(j),
            with("candidates", "[]").into_bytes(),
            422,
            "empty_candidates",
        ),
        (
            "too many candidates".into(),
            Some(j),
            with("candidates", &format!("[{}]", vec!["1"; 200_001].join(","))).into_bytes(),
            422,
            "too_many_candidates",
        ),
        (
            "k zero".into(),
            Some(j),
            with("k", "0").into_bytes(),
            422,
            "invalid_k",
        ),
        (
            "k negative".into(),
            Some(j),
            with("k", "-1").into_bytes(),
            422,
            "invalid_k",
        ),
        (
            "k huge".into(),
            Some(j),
            with("k", "1000000000000").into_bytes(),
            422,
            "invalid_k",
        ),
        (
            "k beyond i64".into(),
            Some(j),
            with("k", "99999999999999999999").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "k float".into(),
            Some(j),
            with("k", "2.5").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "k bool".into(),
            Some(j),
            with("k", "true").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "k null".into(),
            Some(j),
            with("k", "null").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "k string".into(),
            Some(j),
            with("k", "\"10\"").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "k missing".into(),
            Some(j),
            format!("{{\"user\": {{}}, \"candidates\": [{id}]}}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "duplicate field".into(),
            Some(j),
            format!("{{\"k\": 1, {}", &good[1..]).into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "unknown top-level field".into(),
            Some(j),
            with("candidate", "[1]").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "request_id a number".into(),
            Some(j),
            with("request_id", "7").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "model a number".into(),
            Some(j),
            with("model", "7").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "with_probability a string".into(),
            Some(j),
            with("with_probability", "\"yes\"").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "behaviors an object".into(),
            Some(j),
            user("{\"behaviors\": {\"item_id\": 1}}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "behavior without item_id".into(),
            Some(j),
            behavior("{\"action\": \"click\"}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "behavior item_id string".into(),
            Some(j),
            behavior("{\"item_id\": \"1\"}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "behavior item_id negative".into(),
            Some(j),
            behavior("{\"item_id\": -1}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "behavior extra is an object".into(),
            Some(j),
            behavior("{\"item_id\": 1, \"action\": {\"a\": 1}}").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "behavior numeric extra a string".into(),
            Some(j),
            behavior("{\"item_id\": 1, \"seconds_ago\": \"1h\"}").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "too many behaviors".into(),
            Some(j),
            user(&format!(
                "{{\"behaviors\": [{}]}}",
                vec!["{\"item_id\": 1}"; 1001].join(",")
            ))
            .into_bytes(),
            422,
            "too_many_behaviors",
        ),
        (
            "features an array".into(),
            Some(j),
            user("{\"features\": [1, 2]}").into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "numeric feature a string".into(),
            Some(j),
            feature("\"old\"").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "numeric feature a bool".into(),
            Some(j),
            feature("true").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "feature an array".into(),
            Some(j),
            feature("[30]").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "categorical fractional".into(),
            Some(j),
            user("{\"features\": {\"gender\": 0.25}}").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "user id an object".into(),
            Some(j),
            user("{\"id\": {\"x\": 1}}").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "user id twice".into(),
            Some(j),
            user("{\"id\": 1, \"features\": {\"user_id\": 2}}").into_bytes(),
            422,
            "invalid_feature",
        ),
        (
            "model traversal".into(),
            Some(j),
            with("model", "\"../../etc/passwd\"").into_bytes(),
            404,
            "model_not_found",
        ),
        (
            "model empty".into(),
            Some(j),
            with("model", "\"\"").into_bytes(),
            404,
            "model_not_found",
        ),
        (
            "text/plain".into(),
            Some("text/plain"),
            good.clone().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "form".into(),
            Some("application/x-www-form-urlencoded"),
            good.clone().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "multipart".into(),
            Some("multipart/form-data; boundary=x"),
            good.clone().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "xml".into(),
            Some("application/xml"),
            b"<rank/>".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "oversized".into(),
            Some(j),
            vec![b' '; (1 << 20) + 1],
            413,
            "body_too_large",
        ),
    ];
    cases.push((
        "oversized valid json".into(),
        Some(j),
        format!(
            "{{\"user\": {{}}, \"k\": 1, \"candidates\": [{}]}}",
            vec!["123456789"; 120_000].join(",")
        )
        .into_bytes(),
        413,
        "body_too_large",
    ));
    assert!(cases.len() >= 50, "{} cases", cases.len());

    for (name, ctype, body, status, code) in &cases {
        let (got, resp) = send(&app, "POST", *ctype, body.clone()).await;
        assert_eq!(got.as_u16(), *status, "{name}: {resp}");
        let got_code = resp["error"]["code"].as_str().unwrap_or_default();
        assert!(!got_code.is_empty(), "{name}: no error code in {resp}");
        if !code.is_empty() {
            assert_eq!(got_code, *code, "{name}: {resp}");
        }
        assert!(
            !resp["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name}"
        );
    }

    // Valid but adversarial: duplicates are scored once and reported; long strings are just hashed.
    let dup = json!({"user": {"features": {"gender": "x".repeat(100_000)}}, "candidates": vec![id; 5_000], "k": 3});
    let (got, resp) = send(&app, "POST", Some(j), dup.to_string().into_bytes()).await;
    assert_eq!(got, StatusCode::OK, "{resp}");
    assert_eq!(resp["duplicate_candidates"], 4_999);
    assert_eq!(resp["items"].as_array().unwrap().len(), 1);

    // Still serving.
    let (got, _) = send(&app, "POST", Some(j), good.into_bytes()).await;
    assert_eq!(got, StatusCode::OK);
}

/// Raw bytes on a real socket: a body shorter than its Content-Length, a garbage request line, and a
/// header flood. The server answers (or closes) and keeps serving.
#[tokio::test]
async fn wire_level_garbage_does_not_hurt_the_server() {
    let (root, dir) = common::model_root(300, &[Dtype::F32]);
    let id = Reference::open(&dir).ids()[0];
    let (addr, shutdown, handle) = common::spawn_server(root.path()).await;
    let client = reqwest::Client::new();
    common::wait_ready(&client, addr).await;

    let raw = move |bytes: Vec<u8>| {
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .join()
        .unwrap()
    };
    let short = raw(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"user\": {}".to_vec());
    assert!(
        short.is_empty() || short.starts_with("HTTP/1.1 4"),
        "{short}"
    );
    let garbage =
        raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n".to_vec());
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 4"),
        "{garbage}"
    );
    let mut flood = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..5_000 {
        flood.extend_from_slice(format!("X-Junk-{i}: {}\r\n", "a".repeat(50)).as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let flooded = raw(flood);
    assert!(
        flooded.is_empty() || flooded.starts_with("HTTP/1.1 4"),
        "{flooded}"
    );

    let ok = client
        .post(format!("http://{addr}/v1/rank"))
        .json(&json!({"user": {}, "candidates": [id], "k": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    shutdown.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
