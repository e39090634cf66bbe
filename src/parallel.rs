//! Adaptive intra-request parallelism: one large request split across a small dedicated thread pool
//! when cores are idle, and never when they are not.
//!
//! The pool is state, not a global: the server builds one at start-up and hands it to the ranking
//! service and the registry ([`ScoringPool::sequential`] is the pool without workers).
//!
//! [`ScoringPool::rank`] counts the requests currently scoring (an atomic, incremented for every
//! request, sequential or not). A request with at least `min_candidates` candidates is split into as
//! many contiguous chunks as there are idle scoring slots right now (`threads` minus the other
//! requests scoring); with every core busy that is one chunk, and the request runs sequentially on
//! its own thread exactly as [`scoring::rank`] does, so under load the split costs nothing.
//!
//! Each chunk resolves its candidates against one bitset of rows shared by all chunks (atomic
//! `fetch_or`, so a repeated id is scored once and counted once whichever chunk meets it first),
//! scores its rows into its own bounded top-k buffer, and returns at most k survivors. The merge takes
//! the k best of the survivors under the same total order (descending score, then ascending id), and
//! the unknown-id samples in chunk order (= request order), so the result is identical to the
//! sequential one: same items, same scores bit for bit, same counters, same first 100 unknown ids.
//! Chunk buffers and the shared bitsets are pooled and reused.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::scoring::{
    self, better, resolve, score_rows, ItemStore, Kernel, Query, RankStats, Scored, Scratch, TopK,
};

/// Buffers of one parallel request: the shared bitset and one scratch per chunk.
#[derive(Debug, Default)]
struct Shared {
    seen: Vec<AtomicU64>,
    chunks: Vec<Mutex<Scratch>>,
    merged: Vec<Scored>,
}

/// The scoring pool and its admission state (module doc). One per process, built at start-up
/// (`--scoring-threads`) and handed to whoever ranks: the ranking service, the registry's warm-up.
#[derive(Debug)]
pub struct ScoringPool {
    /// The workers; `None`: never split (every request runs on its own thread).
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    min_candidates: usize,
    /// Requests currently in the scoring stage (sequential or split).
    scoring: AtomicUsize,
    /// Reusable [`Shared`] buffers (one taken per split request).
    free: Mutex<Vec<Shared>>,
}

/// Decrements the scoring count when a request leaves the scoring stage (even by panic).
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ScoringPool {
    /// A pool of `threads` workers (named `prerank-score-N`) that splits requests of at least
    /// `min_candidates` candidates.
    pub fn new(
        threads: usize,
        min_candidates: usize,
    ) -> Result<ScoringPool, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("prerank-score-{i}"))
            .build()?;
        Ok(ScoringPool {
            pool: Some(pool),
            threads,
            min_candidates: min_candidates.max(2),
            scoring: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
        })
    }

    /// No workers: every request is scored sequentially on its caller's thread
    /// (`--scoring-threads 0`, and the default of embedders and tests).
    pub fn sequential() -> ScoringPool {
        ScoringPool {
            pool: None,
            threads: 0,
            min_candidates: usize::MAX,
            scoring: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
        }
    }

    /// Worker threads (0: sequential).
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn min_candidates(&self) -> usize {
        self.min_candidates
    }

    /// Requests currently scoring (for tests and metrics).
    pub fn scoring_now(&self) -> usize {
        self.scoring.load(Ordering::Acquire)
    }

    /// How many chunks a request of `n` candidates gets when `others` other requests are scoring.
    pub fn chunks_for(&self, n: usize, others: usize) -> usize {
        if self.pool.is_none() || n < self.min_candidates {
            return 1;
        }
        let idle = self.threads.saturating_sub(others).max(1);
        // Chunks of at least min_candidates / 2 candidates each, so a split always pays for itself.
        idle.min(n / (self.min_candidates / 2).max(1)).max(1)
    }

    /// [`scoring::rank`], split across idle workers when it is large enough (module doc). Same
    /// result as the sequential call, always.
    pub fn rank<V, I>(
        &self,
        store: ItemStore<'_, V, I>,
        query: &Query<'_>,
        kernel: Kernel,
        scratch: &mut Scratch,
    ) -> (Vec<Scored>, RankStats)
    where
        V: AsRef<[u8]> + Sync,
        I: AsRef<[u8]> + Sync,
    {
        if self.pool.is_none() {
            return scoring::rank(store, query, kernel, scratch);
        }
        let others = self.scoring.fetch_add(1, Ordering::AcqRel);
        let _active = Active(&self.scoring);
        let chunks = self.chunks_for(query.candidates.len(), others);
        if chunks <= 1 {
            return scoring::rank(store, query, kernel, scratch);
        }
        self.rank_split(store, query, kernel, chunks)
    }

    /// The split path with exactly `chunks` chunks (public for tests and benchmarks; sequential on
    /// a pool without workers).
    pub fn rank_split<V, I>(
        &self,
        store: ItemStore<'_, V, I>,
        query: &Query<'_>,
        kernel: Kernel,
        chunks: usize,
    ) -> (Vec<Scored>, RankStats)
    where
        V: AsRef<[u8]> + Sync,
        I: AsRef<[u8]> + Sync,
    {
        let Some(pool) = &self.pool else {
            return scoring::rank(store, query, kernel, &mut Scratch::default());
        };
        let chunks = chunks.max(1);
        let k = query.k;
        let mut shared = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        let words = store.rows().div_ceil(64);
        if shared.seen.len() < words {
            shared.seen.resize_with(words, || AtomicU64::new(0));
        }
        if shared.chunks.len() < chunks {
            shared.chunks.resize_with(chunks, Default::default);
        }
        let per = query.candidates.len().div_ceil(chunks).max(1);
        let seen: &[AtomicU64] = &shared.seen;
        let slots = &shared.chunks[..chunks];
        let stats: Vec<RankStats> = pool.install(|| {
            query
                .candidates
                .par_chunks(per)
                .zip(slots.par_iter())
                .map(|(cands, slot)| {
                    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                    let s = &mut *guard;
                    let mut stats = RankStats::default();
                    s.hits.clear();
                    resolve(store.index(), cands, seen, &mut s.hits, &mut stats);
                    let mut top = TopK::new(&mut s.top, k);
                    if k > 0 {
                        score_rows(store, query, &s.hits, &mut top, kernel);
                    }
                    // The merge below reads the chunk's survivors (at most k) from its scratch.
                    s.survivors.clear();
                    top.drain_into(&mut s.survivors);
                    stats
                })
                .collect()
        });
        // Merge: counters, unknown samples in request order, k best of the survivors.
        let mut total = RankStats::default();
        shared.merged.clear();
        for (st, slot) in stats.into_iter().zip(slots) {
            total.unknown += st.unknown;
            total.duplicates += st.duplicates;
            for id in st.unknown_sample {
                if total.unknown_sample.len() < scoring::UNKNOWN_SAMPLE {
                    total.unknown_sample.push(id);
                }
            }
            let s = slot.lock().unwrap_or_else(|p| p.into_inner());
            shared.merged.extend_from_slice(&s.survivors);
            for hit in &s.hits {
                seen[hit.row as usize / 64].store(0, Ordering::Relaxed);
            }
        }
        let merged = &mut shared.merged;
        let k = k.min(merged.len());
        let result = if k == 0 {
            Vec::new()
        } else {
            if k < merged.len() {
                merged.select_nth_unstable_by(k - 1, better);
            }
            let top = &mut merged[..k];
            top.sort_unstable_by(better);
            top.to_vec()
        };
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shared);
        (result, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prerank_format::index::IdIndex;
    use prerank_format::vectors::{encode, Dtype, ItemVectors};
    use proptest::prelude::*;

    fn corpus(
        items: usize,
        dim: usize,
        dtype: Dtype,
        levels: u64,
    ) -> (
        ItemVectors<Vec<u8>>,
        IdIndex<crate::scoring::tests::AlignedBytes>,
        Vec<u64>,
    ) {
        // Few distinct directions (levels) so that many scores tie exactly.
        let mut v = Vec::with_capacity(items * dim);
        for i in 0..items {
            let c = (prerank_format::index::mix64(i as u64) % levels) as usize;
            let mut r: Vec<f32> = (0..dim)
                .map(|d| ((c * 31 + d * 7) % 13) as f32 - 6.0)
                .collect();
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            r.iter_mut().for_each(|x| *x /= n);
            v.extend_from_slice(&r);
        }
        let ids: Vec<u64> = (0..items as u64).map(|i| 1_000 + i * 3).collect();
        let vecs = ItemVectors::parse(encode(dtype, dim, &v), "v").unwrap();
        let idx = IdIndex::parse(
            crate::scoring::tests::aligned(&prerank_format::index::encode(&ids).unwrap()),
            "i",
        )
        .unwrap();
        (vecs, idx, ids)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn split_equals_sequential(
            seed in any::<u64>(),
            n in 0usize..3_000,
            k in 0usize..300,
            chunks in 1usize..6,
            levels in 1u64..40,
            dtype in prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Int8)],
        ) {
            let (vecs, idx, ids) = corpus(700, 24, dtype, levels);
            let mut r = seed;
            let mut next = || { r = prerank_format::index::mix64(r.wrapping_add(0x9e37)); r };
            // Known ids (with many repeats) and unknown ids (also repeated).
            let cands: Vec<u64> = (0..n).map(|_| {
                let x = next();
                if x % 7 == 0 { 5 + x % 150 } else { ids[(x >> 8) as usize % ids.len()] }
            }).collect();
            let u: Vec<f32> = (0..24).map(|_| (next() % 1000) as f32 / 500.0 - 1.0).collect();
            let pool = ScoringPool::new(3, 2).unwrap();
            let mut s = Scratch::default();
            let store = ItemStore::new(&vecs, &idx);
            let query = Query { user: &u, tau: 3.0, candidates: &cands, k };
            for kernel in [Kernel::Fast, Kernel::Exact] {
                let want = scoring::rank(store, &query, kernel, &mut s);
                let got = pool.rank_split(store, &query, kernel, chunks);
                prop_assert_eq!(&got.1, &want.1);
                prop_assert_eq!(got.0.len(), want.0.len());
                for (a, b) in got.0.iter().zip(&want.0) {
                    prop_assert_eq!(a.item_id, b.item_id);
                    prop_assert_eq!(a.score.to_bits(), b.score.to_bits());
                }
                // And again, with the pooled buffers reused.
                let again = pool.rank_split(store, &query, kernel, chunks);
                prop_assert_eq!(&again.0, &got.0);
                prop_assert_eq!(&again.1, &got.1);
            }
        }
    }

    #[test]
    fn adaptive_split_backs_off_when_cores_are_busy() {
        let pool = ScoringPool::new(4, 10_000).unwrap();
        assert_eq!(pool.chunks_for(9_999, 0), 1, "small requests never split");
        assert_eq!(pool.chunks_for(100_000, 0), 4, "idle: one chunk per worker");
        assert_eq!(
            pool.chunks_for(100_000, 2),
            2,
            "two others scoring: two idle slots"
        );
        assert_eq!(pool.chunks_for(100_000, 4), 1, "all busy: sequential");
        assert_eq!(pool.chunks_for(100_000, 9), 1);
        assert_eq!(
            pool.chunks_for(12_000, 0),
            2,
            "chunks stay >= min/2 candidates"
        );
        assert_eq!(pool.scoring_now(), 0);
        let none = ScoringPool::sequential();
        assert_eq!(none.chunks_for(10_000_000, 0), 1, "no workers: never split");
    }
}
