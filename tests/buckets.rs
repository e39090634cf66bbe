//! A/B buckets: deterministic assignment (stable, shares within tolerance over 100k users), overrides,
//! bucket-pinned versions served next to the latest one, a container pinned by PRERANK_BUCKET, and
//! readiness that waits for every bucket's model.

mod lifecycle_support;

use std::collections::BTreeMap;

use lifecycle_support as ls;
use prerank::buckets::{assignment_point, user_key, Buckets};
use prerank::publish::publish;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PLAN: &str = r#"
salt = "exp-2026-11"

[[bucket]]
name = "control"
model = "baseline"
share = 0.5

[[bucket]]
name = "pfd-v1"
model = "pfd"
version = 1
share = 0.2

[[bucket]]
name = "pfd-latest"
model = "pfd"
share = 0.3
"#;

#[test]
fn assignment_is_stable_and_shares_hold_over_100k_users() {
    let plan = Buckets::from_toml(PLAN).unwrap();
    let again = Buckets::from_toml(PLAN).unwrap(); // a restart / another replica
    let n = 100_000u64;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for u in 0..n {
        let id = json!(u * 7919 + 13);
        let b = plan.assign(Some(&id)).unwrap();
        assert_eq!(b.name, again.assign(Some(&id)).unwrap().name);
        // The same user as a string id lands in the same bucket.
        assert_eq!(
            b.name,
            plan.assign(Some(&json!(id.to_string()))).unwrap().name
        );
        *counts.entry(b.name.clone()).or_default() += 1;
    }
    for (name, share) in [("control", 0.5), ("pfd-v1", 0.2), ("pfd-latest", 0.3)] {
        let got = counts[name] as f64 / n as f64;
        // 6 standard deviations of a binomial share at n = 100k is < 0.01.
        assert!((got - share).abs() < 0.01, "{name}: {got} vs {share}");
    }
    // A different salt reshuffles users (a new experiment), keeping the shares.
    let other = Buckets::from_toml(&PLAN.replace("exp-2026-11", "exp-2026-12")).unwrap();
    let moved = (0..10_000u64)
        .filter(|u| {
            let id = json!(u);
            plan.assign(Some(&id)).unwrap().name != other.assign(Some(&id)).unwrap().name
        })
        .count();
    assert!(
        moved > 3_000,
        "only {moved} of 10000 users moved with a new salt"
    );
}

#[test]
fn the_documented_hash_is_pinned() {
    // docs/operations.md: point = (splitmix64(fnv1a64(salt ++ 0x00 ++ key)) >> 11) / 2^53.
    assert_eq!(user_key(Some(&json!(42))), b"42".to_vec());
    assert_eq!(user_key(Some(&json!("u-1"))), b"u-1".to_vec());
    assert_eq!(user_key(Some(&json!(-3))), b"-3".to_vec());
    assert_eq!(user_key(None), Vec::<u8>::new());
    let fnv = prerank_format::fnv1a64(b"exp-2026-11\x0042");
    let h = prerank_format::index::mix64(fnv);
    let want = (h >> 11) as f64 / 9_007_199_254_740_992.0;
    assert_eq!(assignment_point("exp-2026-11", b"42"), want);
    // Fixed values: if these change, users move between buckets across releases.
    assert_eq!(
        format!("{:.12}", assignment_point("exp-2026-11", b"42")),
        POINT_42
    );
    assert_eq!(format!("{:.12}", assignment_point("", b"")), POINT_EMPTY);
}

const POINT_42: &str = "0.622284958781";
const POINT_EMPTY: &str = "0.148383010976";

#[test]
fn invalid_plans_are_refused_at_start_up() {
    for (bad, why) in [
        (PLAN.replace("share = 0.3", "share = 0.4"), "sum"),
        (
            PLAN.replace("name = \"control\"", "name = \"../x\""),
            "invalid name",
        ),
        (
            PLAN.replace("model = \"baseline\"", "model = \"a/b\""),
            "invalid model",
        ),
        (PLAN.replace("version = 1", "version = 0"), "version"),
        (
            PLAN.replace("name = \"pfd-v1\"", "name = \"control\""),
            "twice",
        ),
        (PLAN.replace("salt", "sault"), "unknown field"),
    ] {
        let err = Buckets::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    let plan = Buckets::from_toml(PLAN).unwrap();
    assert!(plan.clone().pin("nope").is_err());
    assert!(plan.pin("control").is_ok());
}

/// A root with `baseline` v1 and `pfd` v1, v2; returns (scratch, root, plan path).
fn two_models() -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let base = ls::source(scratch.path(), "baseline", 41);
    let pfd = ls::source(scratch.path(), "pfd", 42);
    publish(&base, &root.path().join("baseline"), Some(1)).unwrap();
    publish(&pfd, &root.path().join("pfd"), Some(1)).unwrap();
    publish(&pfd, &root.path().join("pfd"), Some(2)).unwrap();
    let plan = scratch.path().join("buckets.toml");
    std::fs::write(&plan, PLAN).unwrap();
    (scratch, root, plan)
}

async fn rank(
    c: &reqwest::Client,
    s: &ls::Server,
    body: &Value,
    header: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = c.post(s.url("/v1/rank")).json(body);
    if let Some(h) = header {
        req = req.header("x-prerank-bucket", h);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_bucket_model_version_and_overrides_are_honoured() {
    let (_scratch, root, plan_path) = two_models();
    let plan = Buckets::from_toml(PLAN).unwrap();
    let server = ls::start(root.path(), false, |c| c.buckets = Some(plan_path.clone())).await;
    let c = ls::client();
    ls::wait_ready(&c, &server).await;

    let want_model_version = |bucket: &str| match bucket {
        "control" => ("baseline", 1),
        "pfd-v1" => ("pfd", 1),
        "pfd-latest" => ("pfd", 2),
        other => panic!("unexpected bucket {other}"),
    };
    let mut seen = BTreeMap::new();
    for u in 0..40u64 {
        let (s, r) = rank(&c, &server, &ls::body(u), None).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        let assigned = plan.assign(Some(&json!(u))).unwrap().name.clone();
        assert_eq!(r["bucket"], assigned.as_str());
        let (m, v) = want_model_version(&assigned);
        assert_eq!(
            (r["model"].as_str(), r["version"].as_u64()),
            (Some(m), Some(v)),
            "{r}"
        );
        // Same user again: same bucket.
        let (_, again) = rank(&c, &server, &ls::body(u), None).await;
        assert_eq!(again["bucket"], r["bucket"]);
        *seen.entry(assigned).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "40 users should reach all three buckets: {seen:?}"
    );

    // Overrides: body, header, body over header; unknown bucket 422.
    let mut body = ls::body(1);
    body["bucket"] = json!("pfd-v1");
    let (_, r) = rank(&c, &server, &body, Some("control")).await;
    assert_eq!(
        (
            r["bucket"].as_str(),
            r["model"].as_str(),
            r["version"].as_u64()
        ),
        (Some("pfd-v1"), Some("pfd"), Some(1))
    );
    let (_, r) = rank(&c, &server, &ls::body(1), Some("pfd-latest")).await;
    assert_eq!(
        (r["bucket"].as_str(), r["version"].as_u64()),
        (Some("pfd-latest"), Some(2))
    );
    let (s, r) = rank(&c, &server, &ls::body(1), Some("nope")).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_bucket"))
    );
    // Naming a model leaves the plan: bucket "none".
    let mut body = ls::body(1);
    body["model"] = json!("baseline");
    let (_, r) = rank(&c, &server, &body, None).await;
    assert_eq!(
        (r["bucket"].as_str(), r["model"].as_str()),
        (Some("none"), Some("baseline"))
    );

    // Status lists the plan; metrics carry the bucket label.
    let m = ls::models(&c, &server).await;
    let buckets = m["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    assert_eq!(buckets[1]["live_version"], 1);
    assert_eq!(buckets[2]["live_version"], 2);
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("prerank_requests_total{route=\"/v1/rank\",status=\"200\",model=\"pfd\",version=\"1\",bucket=\"pfd-v1\"}"),
        "{metrics}"
    );

    // A newer pfd goes live for pfd-latest; pfd-v1 stays on 1.
    let (s, r) = rank(&c, &server, &ls::body(1), Some("pfd-v1")).await;
    assert_eq!((s, r["version"].as_u64()), (StatusCode::OK, Some(1)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_container_serves_one_bucket_and_readiness_waits_for_every_bucket() {
    let (scratch, root, plan_path) = two_models();
    // PRERANK_BUCKET: one container per bucket.
    let server = ls::start(root.path(), false, |c| {
        c.buckets = Some(plan_path.clone());
        c.bucket = Some("pfd-v1".into());
    })
    .await;
    let c = ls::client();
    ls::wait_ready(&c, &server).await;
    for u in 0..10u64 {
        let (s, r) = rank(&c, &server, &ls::body(u), None).await;
        assert_eq!(
            (s, r["bucket"].as_str(), r["version"].as_u64()),
            (StatusCode::OK, Some("pfd-v1"), Some(1))
        );
    }
    let (s, r) = rank(&c, &server, &ls::body(1), Some("control")).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_bucket"))
    );
    server.stop().await;

    // A plan whose bucket model is not published yet: not ready until it is, then ready for good.
    let later = scratch.path().join("later.toml");
    std::fs::write(
        &later,
        "[[bucket]]\nname = \"a\"\nmodel = \"baseline\"\nshare = 0.5\n\n[[bucket]]\nname = \"b\"\nmodel = \"fresh\"\nshare = 0.5\n",
    )
    .unwrap();
    let server = ls::start(root.path(), false, |c| c.buckets = Some(later.clone())).await;
    ls::wait_until(20, "baseline to load", || async {
        ls::serving(&c, &server, "baseline").await == Some(1)
    })
    .await;
    let ready = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Requests for the unavailable bucket: 503 bucket_unavailable; the other bucket serves.
    let mut body = ls::body(1);
    body["bucket"] = json!("b");
    let (s, r) = rank(&c, &server, &body, None).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("bucket_unavailable"))
    );
    body["bucket"] = json!("a");
    assert_eq!(rank(&c, &server, &body, None).await.0, StatusCode::OK);
    let fresh = ls::source(scratch.path(), "fresh", 43);
    publish(&fresh, &root.path().join("fresh"), None).unwrap();
    ls::wait_ready(&c, &server).await;
    // Readiness never flaps while versions of a bucket model are swapped.
    let checker = {
        let (c, url) = (c.clone(), server.url("/readyz"));
        tokio::spawn(async move {
            let mut not_ready = 0;
            for _ in 0..200 {
                if c.get(&url).send().await.unwrap().status() != 200 {
                    not_ready += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            not_ready
        })
    };
    for _ in 0..2 {
        publish(&fresh, &root.path().join("fresh"), None).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    assert_eq!(checker.await.unwrap(), 0, "/readyz flapped during swaps");
    ls::wait_serving(&c, &server, "fresh", 3).await;
    server.stop().await;
}
