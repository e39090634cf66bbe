//! Criterion benchmarks of the request path's CPU work at real sizes.
//!
//! Groups (filter with criterion's argument, e.g. `cargo bench -p prerank --bench scoring -- int8`):
//!
//! - `score_k1000/<dtype>/<N>`: id lookup + dot on the stored dtype + top-k (k = 1000) for
//!   N = 10^3, 10^4, 10^5 candidates drawn uniformly (distinct) from the corpus, one thread, the files
//!   memory-mapped (`--load-mode mmap`). Each has a `<dtype>_read_floor/<N>` twin: the same two passes
//!   over the same candidates with the same prefetches (table slot 16 candidates ahead, every cache
//!   line of the row `rows_ahead(dtype)` rows ahead), reading the table slots and every cache line of
//!   every row the kernel reads, with no dot product, no dedup bitset and no top-k. `kernel / floor`
//!   is the kernel's overhead over the memory access it cannot avoid.
//! - `score_k1000_copy/...`: the same pair over private anonymous copies of the vector file and the
//!   index (`--load-mode copy`, `MADV_HUGEPAGE`), i.e. what transparent huge pages buy. The copy is made
//!   only when one of these benchmarks runs (it costs the files' size in memory).
//! - `score_k1000_parallel/<dtype>_threads<T>/<N>`: one request (N = 10^4, 10^5) split across a
//!   scoring pool of all CPUs (compare with `score_k1000/<dtype>/<N>`).
//! - `user_tower/forward_behaviors50`: one user-tower forward pass, 50 behaviours.
//! - `section3/two_tower/<N>` vs `section3/full_mapping/<N>`: the paper's section-3 argument on our
//!   tower: one user mapping + N inner products (f32), against N full mappings (a model without the
//!   two-tower split runs the network once per candidate; emulated by N user-tower forward passes).
//!
//! `PRERANK_BENCH_NS` (comma-separated) replaces the candidate counts N = 10^3, 10^4, 10^5.
//! The corpus (d = 128, f32 + f16 + int8) lives in `$PRERANK_BENCH_DIR/items-$PRERANK_BENCH_ITEMS/
//! bench/1` (defaults: `target/bench-snapshots`, 1,000,000 items) and is generated on first use
//! (10^7 items: about 80 s and 16 GB of memory, 10 GB on disk). Timings are reported in
//! docs/benchmarks.md; nothing here asserts a time.

use std::cell::OnceCell;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prerank::model::UserInput;
use prerank::parallel::ScoringPool;
use prerank::scoring::{rank, rows_ahead, ItemStore, Kernel, Query, Scratch, LOOKUP_AHEAD};
use prerank::snapshot::{LoadOptions, Snapshot};
use prerank::synth::{generate, sample_request, SynthConfig};
use prerank_format::index::{lookup, mix64, IdIndex};
use prerank_format::mmap::{copy_file, prefetch};
use prerank_format::vectors::ItemVectors;
use prerank_format::Dtype;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn corpus() -> PathBuf {
    let items: usize = std::env::var("PRERANK_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = std::env::var_os("PRERANK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-snapshots")
        });
    let dir = root.join(format!("items-{items}")).join("bench/1");
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

/// Touches exactly the bytes `rank` must read (table slots, then every cache line of each row's
/// payload), with the same prefetch distances, and nothing else.
fn read_floor<V: AsRef<[u8]>, I: AsRef<[u8]>>(
    vectors: &ItemVectors<V>,
    index: &IdIndex<I>,
    cands: &[u64],
    rows: &mut Vec<u32>,
) -> u64 {
    let table = index.table();
    let table_bytes: &[u8] = bytemuck::cast_slice(table);
    let slot = std::mem::size_of_val(&table[0]);
    let mask = index.mask();
    rows.clear();
    for (i, &id) in cands.iter().enumerate() {
        if let Some(&ahead) = cands.get(i + LOOKUP_AHEAD) {
            prefetch(table_bytes, (mix64(ahead) as usize & mask) * slot);
        }
        if let Some(r) = lookup(table, mask, id) {
            rows.push(r);
        }
    }
    let body = vectors.body();
    let stride = vectors.row_stride();
    let payload = vectors.dtype().payload_bytes(vectors.dim());
    let ahead = rows_ahead(vectors.dtype(), vectors.dim());
    let mut acc = 0u64;
    for (j, &row) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(j + ahead) {
            for line in (0..payload).step_by(64) {
                prefetch(body, next as usize * stride + line);
            }
        }
        let base = row as usize * stride;
        for line in (0..payload).step_by(64) {
            acc = acc.wrapping_add(u64::from(body[base + line]));
        }
    }
    acc
}

/// A kernel + read-floor pair for every N.
fn score_pair<'a, V: AsRef<[u8]> + 'a, I: AsRef<[u8]> + 'a>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    get: &dyn Fn() -> (&'a ItemVectors<V>, &'a IdIndex<I>),
    sets: &[Vec<u64>],
    u: &[f32],
    tau: f32,
) {
    for cands in sets {
        let n = cands.len();
        let mut scratch = Scratch::default();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(name, n), cands, |b, cands| {
            let (vectors, index) = get();
            let store = ItemStore::new(vectors, index);
            let query = Query {
                user: u,
                tau,
                candidates: cands,
                k: 1000,
            };
            b.iter(|| rank(store, &query, Kernel::Fast, &mut scratch))
        });
        let mut rows = Vec::new();
        group.bench_with_input(
            BenchmarkId::new(format!("{name}_read_floor"), n),
            cands,
            |b, cands| {
                let (vectors, index) = get();
                b.iter(|| read_floor(vectors, index, cands, &mut rows))
            },
        );
    }
}

fn benches(c: &mut Criterion) {
    let dir = corpus();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let opts = LoadOptions {
        dtype: Some(Dtype::F32),
        verify: false,
        huge_pages: true,
        golden: false,
        ..LoadOptions::default()
    };
    let snap = Snapshot::load(&dir, &opts).expect("load corpus");
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
    let user50 = req50.user.clone().into_domain();
    let input = UserInput::new(&user50).unwrap();
    let u = snap.user_vector(&input).unwrap();
    let tau = snap.manifest().tau;
    let files = snap.files();
    // PRERANK_BENCH_NS overrides the candidate counts, e.g. `20000` for the service comparison.
    let sizes: Vec<usize> = std::env::var("PRERANK_BENCH_NS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .expect("PRERANK_BENCH_NS: comma-separated counts")
                })
                .collect()
        })
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::Int8];
    // One candidate set per (dtype, N), the same for every variant of that pair.
    let sets: Vec<Vec<Vec<u64>>> = dtypes
        .iter()
        .map(|_| {
            sizes
                .iter()
                .map(|&n| ids.choose_multiple(&mut rng, n).copied().collect())
                .collect()
        })
        .collect();

    let mut group = c.benchmark_group("score_k1000");
    group.sample_size(20);
    for (d, &dtype) in dtypes.iter().enumerate() {
        let vectors = files.vectors_for(dtype).expect("dtype stored");
        let get = || (vectors, &files.index);
        score_pair(&mut group, dtype.name(), &get, &sets[d], &u, tau);
    }
    group.finish();

    let mut group = c.benchmark_group("score_k1000_copy");
    group.sample_size(20);
    let index_path = dir.join(&snap.manifest().items.index_file);
    let copied_index: OnceCell<IdIndex<memmap2::Mmap>> = OnceCell::new();
    for (d, &dtype) in dtypes.iter().enumerate() {
        let file = snap
            .manifest()
            .items
            .vectors
            .iter()
            .find(|v| v.dtype == dtype)
            .expect("dtype stored")
            .file
            .clone();
        let copied: OnceCell<ItemVectors<memmap2::Mmap>> = OnceCell::new();
        let get = || {
            let v = copied.get_or_init(|| {
                let m = copy_file(&dir.join(&file), true).expect("copy vectors");
                ItemVectors::parse(m, &file).expect("parse copy")
            });
            let i = copied_index.get_or_init(|| {
                let m = copy_file(&index_path, true).expect("copy index");
                IdIndex::parse(m, "index").expect("parse copy")
            });
            (v, i)
        };
        score_pair(&mut group, dtype.name(), &get, &sets[d], &u, tau);
    }
    group.finish();

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ScoringPool::new(threads, 2).expect("scoring pool");
    let mut group = c.benchmark_group("score_k1000_parallel");
    group.sample_size(20);
    for (d, &dtype) in dtypes.iter().enumerate() {
        let vectors = files.vectors_for(dtype).expect("dtype stored");
        for cands in sets[d].iter().filter(|c| c.len() >= 10_000) {
            group.throughput(Throughput::Elements(cands.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{}_threads{threads}", dtype.name()), cands.len()),
                cands,
                |b, cands| {
                    let store = ItemStore::new(vectors, &files.index);
                    let query = Query {
                        user: &u,
                        tau,
                        candidates: cands,
                        k: 1000,
                    };
                    b.iter(|| pool.rank_split(store, &query, Kernel::Fast, threads))
                },
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("user_tower");
    group.bench_function("forward_behaviors50", |b| {
        b.iter(|| snap.user_vector(&input).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("section3");
    group.sample_size(10);
    let vectors = files.vectors_for(Dtype::F32).expect("f32 stored");
    for n in [1_000usize, 10_000] {
        let cands: Vec<u64> = ids.choose_multiple(&mut rng, n).copied().collect();
        let mut scratch = Scratch::default();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("two_tower", n), &cands, |b, cands| {
            let store = ItemStore::new(vectors, &files.index);
            b.iter(|| {
                let u = snap.user_vector(&input).unwrap();
                let query = Query {
                    user: &u,
                    tau,
                    candidates: cands,
                    k: 1000,
                };
                rank(store, &query, Kernel::Fast, &mut scratch)
            })
        });
        group.bench_with_input(BenchmarkId::new("full_mapping", n), &n, |b, &n| {
            b.iter(|| {
                (0..n)
                    .map(|_| snap.user_vector(&input).unwrap()[0])
                    .sum::<f32>()
            })
        });
    }
    group.finish();
}

criterion_group!(scoring, benches);
criterion_main!(scoring);
