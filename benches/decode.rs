//! Request decode and response encode, JSON vs protobuf (docs/benchmarks.md, "Request decode: JSON vs
//! protobuf").
//!
//! Bodies are realistic: 50 behaviours with their fields, profile features and N candidates, N in
//! {1k, 10k, 20k, 100k}, drawn from a pool of 19-digit ids (what ids exported from a catalogue look
//! like; they are the expensive case for a JSON number parser). Decoders, all into `api::RankRequest`:
//!
//! - `parse_json`: what the service runs (`api::parse_json`: plain serde_json, re-parsed with
//!   serde_path_to_error only when it fails, for the field path in the message);
//! - `path_to_error`: `api::parse_json_tracked`, the service's decoder before that fast path
//!   (serde_json + serde_path_to_error on every body);
//! - `serde_json`: plain `serde_json::from_slice` (no field path tracking);
//! - `sonic_rs`: `sonic_rs::from_slice` (SIMD JSON, serde-compatible);
//! - `protobuf`: `proto::decode_request` (prost decode + conversion to the JSON types).
//!
//! Then response encode at k = 1000: `serde_json::to_vec` vs `proto::encode_response`.
//!
//! `cargo bench -p prerank --bench decode` (set `DECODE_BENCH_SAMPLES` to change the sample size,
//! default 10: the 100k bodies take milliseconds each).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prerank::api::{parse_json, parse_json_tracked, RankRequest, RankResponse, RankedItem};
use prerank::proto;
use prerank::synth::sample_request_sized;
use rand::{Rng, SeedableRng};

const SIZES: [usize; 4] = [1_000, 10_000, 20_000, 100_000];

fn samples() -> usize {
    std::env::var("DECODE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn bodies(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
    let pool: Vec<u64> = (0..200_000)
        .map(|_| rng.gen_range(1_000_000_000_000_000_000..10_000_000_000_000_000_000u64))
        .collect();
    let req = sample_request_sized(&mut rng, &pool, n, 50, 1000);
    let json = serde_json::to_vec(&req).expect("json");
    let pb = proto::encode_request(&req).expect("protobuf");
    (json, pb)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group
        .sample_size(samples())
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let (json, pb) = bodies(n);
        // Every decoder must see the same request.
        let want: RankRequest = parse_json(&json).expect("parse_json");
        let check = |r: &RankRequest| {
            assert_eq!(r.candidates, want.candidates);
            assert_eq!(r.user.behaviors.len(), want.user.behaviors.len());
        };
        check(&serde_json::from_slice(&json).expect("serde_json"));
        check(&sonic_rs::from_slice(&json).expect("sonic_rs"));
        check(&proto::decode_request(&pb).expect("protobuf"));
        eprintln!(
            "n = {n}: JSON body {} bytes, protobuf body {} bytes",
            json.len(),
            pb.len()
        );

        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("parse_json", n), &json, |b, body| {
            b.iter(|| parse_json::<RankRequest>(body).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("path_to_error", n), &json, |b, body| {
            b.iter(|| parse_json_tracked::<RankRequest>(body).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("serde_json", n), &json, |b, body| {
            b.iter(|| serde_json::from_slice::<RankRequest>(body).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("sonic_rs", n), &json, |b, body| {
            b.iter(|| sonic_rs::from_slice::<RankRequest>(body).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("protobuf", n), &pb, |b, body| {
            b.iter(|| proto::decode_request(body).expect("decode"))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let resp = RankResponse {
        request_id: format!("{:032x}", rng.gen::<u128>()),
        bucket: "default".into(),
        model: "pfd-student".into(),
        version: 3,
        items: (0..1000)
            .map(|_| RankedItem {
                item_id: rng.gen_range(1_000_000_000_000_000_000..10_000_000_000_000_000_000u64),
                score: rng.gen_range(-8.0..8.0f32),
                probability: None,
            })
            .collect(),
        candidates: 20_000,
        unknown_candidates: 12,
        unknown_candidate_ids: (0..12).map(|i| i * 7).collect(),
        duplicate_candidates: 3,
        ignored_features: vec!["not_a_feature".into()],
        dtype: "f32".into(),
        took_us: 1234,
    };
    eprintln!(
        "k = 1000 response: JSON {} bytes, protobuf {} bytes",
        serde_json::to_vec(&resp).map(|v| v.len()).unwrap_or(0),
        proto::encode_response(&resp).len()
    );
    let mut group = c.benchmark_group("encode_k1000");
    group
        .sample_size(samples().max(10))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("json", |b| {
        b.iter(|| serde_json::to_vec(&resp).expect("encode"))
    });
    group.bench_function("protobuf", |b| b.iter(|| proto::encode_response(&resp)));
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
