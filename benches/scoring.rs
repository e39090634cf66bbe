//! Criterion benchmarks of the request path's CPU work at real sizes: scoring (id lookup + dot +
//! top-k, k = 1000) for N = 10^4 and 10^5 candidates and each stored dtype over a synthetic corpus,
//! and the user tower forward pass with a 50-behaviour sequence.
//!
//! Each scoring benchmark has a `read_floor` twin: the same two passes over the same candidates with
//! the same prefetching (id lookup, then every cache line of every row read), but no dot product and
//! no top-k, so `score / read_floor` is the kernel's overhead over the memory access it cannot avoid.
//!
//! The corpus is generated once into `target/bench-snapshots/` (not in git). Size it with
//! `PRERANK_BENCH_ITEMS` (default 1,000,000). Run: `cargo bench --bench scoring`.
//! Timings are reported in docs/benchmarks.md; nothing here asserts a time.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prerank::model::UserInput;
use prerank::scoring::{rank, Scratch};
use prerank::snapshot::{LoadOptions, Snapshot};
use prerank::synth::{generate, sample_request, SynthConfig};
use prerank_format::index::{lookup, mix64, IdIndex};
use prerank_format::mmap::prefetch;
use prerank_format::vectors::ItemVectors;
use prerank_format::Dtype;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn corpus() -> PathBuf {
    let items: usize = std::env::var("PRERANK_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-snapshots")
        .join(format!("items-{items}"))
        .join("bench/1");
    if !dir.join("manifest.json").exists() {
        eprintln!(
            "generating a {items}-item benchmark corpus in {}",
            dir.display()
        );
        let cfg = SynthConfig {
            model: "bench".into(),
            items,
            dtypes: vec![Dtype::F32, Dtype::F16, Dtype::Int8],
            golden: 0,
            categories: 1_000,
            ..SynthConfig::default()
        };
        generate(&dir, &cfg).expect("generate benchmark corpus");
    }
    dir
}

/// Touches exactly the bytes `rank` must read (table slots, then each row's cache lines), with the same
/// prefetch distances, and nothing else.
fn read_floor(
    vectors: &ItemVectors<memmap2::Mmap>,
    index: &IdIndex<memmap2::Mmap>,
    cands: &[u64],
    rows: &mut Vec<u32>,
) -> u64 {
    let table = index.table();
    let table_bytes: &[u8] = bytemuck::cast_slice(table);
    let mask = index.mask();
    rows.clear();
    for (i, &id) in cands.iter().enumerate() {
        if let Some(&ahead) = cands.get(i + 16) {
            prefetch(table_bytes, (mix64(ahead) as usize & mask) * 16);
        }
        if let Some(r) = lookup(table, mask, id) {
            rows.push(r);
        }
    }
    let body = vectors.body();
    let stride = vectors.row_stride();
    let payload = vectors.dtype().payload_bytes(vectors.dim());
    let mut acc = 0u64;
    for (j, &row) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(j + 8) {
            for line in (0..payload).step_by(64) {
                prefetch(body, ahead as usize * stride + line);
            }
        }
        let base = row as usize * stride;
        for line in (0..payload).step_by(64) {
            acc = acc.wrapping_add(u64::from(body[base + line]));
        }
    }
    acc
}

fn benches(c: &mut Criterion) {
    let dir = corpus();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let opts = |dtype| LoadOptions {
        dtype: Some(dtype),
        verify: false,
        huge_pages: true,
        golden: false,
        load_mode: prerank::format::reader::LoadMode::Mmap,
    };
    let snap = Snapshot::load(&dir, &opts(Dtype::F32)).expect("load corpus");
    let ids = snap.files().index.ids().to_vec();
    let req = sample_request(&mut rng, &ids, 0, 1000);
    let mut req50 = req.clone();
    req50.user.behaviors = (0..50)
        .map(|_| {
            req.user
                .behaviors
                .first()
                .cloned()
                .unwrap_or_else(|| prerank::api::BehaviorJson {
                    item_id: ids[0],
                    fields: Default::default(),
                })
        })
        .collect();
    for (i, b) in req50.user.behaviors.iter_mut().enumerate() {
        b.item_id = ids[i * 7919 % ids.len()];
    }
    let input = UserInput::from_json(&req50.user).unwrap();
    let u = snap.user_vector(&input).unwrap();
    let tau = snap.manifest().tau;

    let mut group = c.benchmark_group("score_k1000");
    group.sample_size(20);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
        let files = snap.files();
        let vectors = files.vectors_for(dtype).expect("dtype stored");
        for n in [10_000usize, 100_000] {
            let candidates: Vec<u64> = ids.choose_multiple(&mut rng, n).copied().collect();
            let mut scratch = Scratch::default();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(
                BenchmarkId::new(dtype.name(), n),
                &candidates,
                |b, cands| {
                    b.iter(|| {
                        rank(
                            &u,
                            tau,
                            vectors,
                            &files.index,
                            cands,
                            1000,
                            &mut scratch,
                            true,
                        )
                    })
                },
            );
            let mut rows = Vec::new();
            group.bench_with_input(
                BenchmarkId::new(format!("{}_read_floor", dtype.name()), n),
                &candidates,
                |b, cands| b.iter(|| read_floor(vectors, &files.index, cands, &mut rows)),
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("user_tower");
    group.bench_function("forward_behaviors50", |b| {
        b.iter(|| snap.user_vector(&input).unwrap())
    });
    group.finish();
}

criterion_group!(scoring, benches);
criterion_main!(scoring);
