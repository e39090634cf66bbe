//! Heap allocations on the scoring hot path, counted by a global allocator wrapper (this test binary
//! only): after warm-up, a `scoring::rank` call allocates a small constant number of times,
//! independent of the number of candidates (its result vector, plus the unknown-id sample when there
//! are unknown ids). Also prints what one user-tower forward pass allocates (reported in
//! docs/benchmarks.md, not asserted).

use std::alloc::System;

use prerank::scoring::{rank, ItemStore, Kernel, Query, Scratch};
use prerank::snapshot::{LoadOptions, Snapshot};
use prerank::synth::{generate, sample_request, SynthConfig};
use prerank_format::Dtype;
use rand::SeedableRng;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (count including reallocations, bytes) made by `f`. Other test threads would add to
/// the count, so this binary holds a single test.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let c = region.change();
    (
        out,
        c.allocations + c.reallocations,
        c.bytes_allocated + c.bytes_reallocated.max(0) as usize,
    )
}

#[test]
fn warm_rank_allocates_a_constant_number_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m/1");
    let cfg = SynthConfig {
        items: 30_000,
        dtypes: vec![Dtype::F32, Dtype::F16, Dtype::Int8],
        golden: 0,
        ..SynthConfig::default()
    };
    generate(&path, &cfg).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
        let snap = Snapshot::load(
            &path,
            &LoadOptions {
                dtype: Some(dtype),
                golden: false,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let files = snap.files();
        let vectors = files.vectors_for(dtype).unwrap();
        let ids = files.index.ids().to_vec();
        let mut scratch = Scratch::default();
        let mut per_n = Vec::new();
        for n in [1_000usize, 10_000] {
            let mut req = sample_request(&mut rng, &ids, n, 1000);
            req.candidates.extend([1, 2, 3]); // unknown ids: the sample vector allocates once
            let u = vec![0.1f32; snap.info().dim];
            let store = ItemStore::new(vectors, &files.index);
            let query = Query {
                user: &u,
                tau: 5.0,
                candidates: &req.candidates,
                k: 1000,
            };
            let mut call = || rank(store, &query, Kernel::Fast, &mut scratch);
            // Warm-up: grows the scratch buffers to this size.
            for _ in 0..3 {
                call();
            }
            let (_, allocs, bytes) = counted(call);
            per_n.push(allocs);
            assert!(
                allocs <= 4,
                "{dtype}: a warm rank over {n} candidates allocated {allocs} times ({bytes} bytes)"
            );
            assert!(
                bytes < 64 * 1024,
                "{dtype}: {bytes} bytes for {n} candidates"
            );
        }
        assert_eq!(
            per_n[0], per_n[1],
            "{dtype}: allocations depend on N: {per_n:?}"
        );

        let small = sample_request(&mut rng, &ids, 0, 10).user.into_domain();
        let input = prerank::model::UserInput::new(&small).unwrap();
        let mut b50 = sample_request(&mut rng, &ids, 0, 10).user;
        b50.behaviors = (0..50)
            .map(|i| prerank::api::BehaviorJson {
                item_id: ids[i * 13],
                fields: Default::default(),
            })
            .collect();
        let b50 = b50.into_domain();
        let input50 = prerank::model::UserInput::new(&b50).unwrap();
        let _ = snap.user_vector(&input50).unwrap();
        let (_, fa, fb) = counted(|| snap.user_vector(&input50).unwrap());
        let (_, ga, gb) = counted(|| snap.user_vector(&input).unwrap());
        println!(
            "{dtype}: warm rank allocations {per_n:?}; user tower forward: {fa} allocations / {fb} bytes \
             (50 behaviours), {ga} / {gb} ({} behaviours)",
            input.behaviors.len()
        );
    }
}
