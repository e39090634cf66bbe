//! Candidate scoring: id lookup, dot products against the stored dtype, top-k.
//!
//! Pure and synchronous. For each candidate id: find its row in the id index (skip and count unknown
//! ids, score repeated ids once), compute `tau * <u, v_row>` directly on the stored f32 / f16 / int8
//! row, and keep the k best, ordered by descending score and then ascending item id, so the result is
//! deterministic (bit for bit: the same row always gets the same score, whichever path scored it).
//!
//! Two kernels compute the dot products: [`dot_scalar`], the obviously-correct reference, and
//! [`dot_fast`], written for the auto-vectoriser with several independent accumulators and compiled
//! in several versions by `multiversion` (AVX2+FMA, AVX-512, baseline) with run-time dispatch, so a
//! portable build still uses the host's widest SIMD. The two are property-tested against each other.
//! On the request path the dispatch happens once per call, not once per row: [`score_rows`] is one
//! multiversioned loop per dtype with the dot product inlined into it.
//!
//! Memory, not arithmetic, bounds this code: each candidate costs a random read in the id table and
//! one in the item file. [`rank`] therefore works in two passes, each issuing software prefetches
//! ahead so that many cache misses are in flight at once: pass 1 resolves ids to rows (prefetching
//! the table slot of candidate `i + LOOKUP_AHEAD`), pass 2 scores the rows (prefetching every cache
//! line of the row [`rows_ahead`] rows further, a distance that keeps about the same number of lines
//! in flight for every dtype).
//!
//! Top-k is a threshold filter over a bounded buffer: a score below the k-th best seen so far cannot
//! enter the result and is dropped at once, so after the first few thousand candidates almost every
//! candidate costs one comparison; the buffer is shrunk to k by `select_nth_unstable_by` whenever it
//! reaches `4k`. Per-request buffers live in a [`Scratch`] that callers reuse across requests, so a
//! warm call allocates only its result.
//!
//! The inputs are three small types instead of a long positional list: an [`ItemStore`] (the item
//! rows of one dtype and the id index; it alone knows where a row's bytes, and an int8 row's scale,
//! live), a [`Query`] (user vector, `tau`, candidates, k) and a [`Kernel`] (the exact reference
//! arithmetic or the fast one).
//!
//! [`crate::parallel`] splits one large request across a thread pool with the same building blocks
//! ([`resolve`], [`score_rows`], [`TopK`]) and merges to the identical result.

use std::sync::atomic::{AtomicU64, Ordering};

use std::cell::RefCell;

use multiversion::multiversion;
use prerank_format::index::{lookup, mix64, IdIndex};
use prerank_format::mmap::prefetch;
use prerank_format::vectors::{Dtype, ItemVectors, RowRef};

/// The item rows of one dtype and the id index they are looked up in: what scoring reads.
///
/// The view hides the row layout: the kernels get a row's payload bytes and (int8) its scale from
/// here, never by offset arithmetic of their own, so a layout that keeps the scale elsewhere changes
/// this type only.
#[derive(Debug)]
pub struct ItemStore<'a, V, I> {
    vectors: &'a ItemVectors<V>,
    index: &'a IdIndex<I>,
}

impl<V, I> Clone for ItemStore<'_, V, I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V, I> Copy for ItemStore<'_, V, I> {}

impl<'a, V: AsRef<[u8]>, I: AsRef<[u8]>> ItemStore<'a, V, I> {
    /// `vectors` rows are looked up through `index` (both of one snapshot: same count).
    pub fn new(vectors: &'a ItemVectors<V>, index: &'a IdIndex<I>) -> Self {
        ItemStore { vectors, index }
    }

    pub fn vectors(&self) -> &'a ItemVectors<V> {
        self.vectors
    }

    pub fn index(&self) -> &'a IdIndex<I> {
        self.index
    }

    pub fn dtype(&self) -> Dtype {
        self.vectors.dtype()
    }

    pub fn dim(&self) -> usize {
        self.vectors.dim()
    }

    /// Item rows (the dedup bitset has one bit per row).
    pub fn rows(&self) -> usize {
        self.vectors.count()
    }

    /// The byte layout pass 2 walks (see [`RowBytes`]).
    fn row_bytes(&self) -> RowBytes<'a> {
        let dtype = self.vectors.dtype();
        let dim = self.vectors.dim();
        RowBytes {
            body: self.vectors.body(),
            stride: self.vectors.row_stride(),
            payload: dtype.payload_bytes(dim),
            scale_at: dim.div_ceil(4) * 4,
            ahead: rows_ahead(dtype, dim),
        }
    }
}

/// What to score: one user vector against the candidates, keeping the k best.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The L2-normalised user vector (the store's dimension).
    pub user: &'a [f32],
    /// Scores are `tau * <user, row>`.
    pub tau: f32,
    pub candidates: &'a [u64],
    pub k: usize,
}

/// Which dot-product arithmetic scores the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// [`dot_scalar`]: sequential f64 accumulation, the obviously-correct reference (golden checks).
    Exact,
    /// [`dot_fast`]'s arithmetic, multiversioned SIMD (the request path).
    Fast,
}

/// One candidate resolved to its row, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) row: u32,
    pub(crate) item_id: u64,
}

/// One scored item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item_id: u64,
    pub score: f32,
}

/// Counters of one ranking call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankStats {
    pub unknown: usize,
    /// The first (up to 100) unknown ids.
    pub unknown_sample: Vec<u64>,
    pub duplicates: usize,
}

/// Maximum unknown ids echoed back.
pub const UNKNOWN_SAMPLE: usize = 100;

/// Reusable buffers, one per worker thread: no allocation per request once warm.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Top-k candidates buffer (at most `4k` entries, see [`TopK`]).
    pub(crate) top: Vec<Scored>,
    /// The known, distinct candidates resolved to rows, in request order.
    pub(crate) hits: Vec<Hit>,
    /// One bit per item row, to detect repeated candidates; cleared after each call.
    seen: Vec<u64>,
    /// A parallel chunk's top-k survivors, read by the merge ([`crate::parallel`]).
    pub(crate) survivors: Vec<Scored>,
}

/// How many candidates ahead pass 1 prefetches id-table slots.
pub const LOOKUP_AHEAD: usize = 16;

/// Cache lines of item rows pass 2 keeps requested ahead of the row being scored (per dtype the
/// distance in rows is this divided by the row's lines; see [`rows_ahead`]).
const LINES_AHEAD: usize = 32;

/// How many rows ahead pass 2 prefetches rows of `dtype` at dimension `dim` (also used by the
/// benchmarks' read floor, so that both issue the same prefetches).
pub fn rows_ahead(dtype: Dtype, dim: usize) -> usize {
    let lines = dtype.payload_bytes(dim).div_ceil(64).max(1);
    (LINES_AHEAD / lines).clamp(4, 16)
}

/// Set of rows already seen in this request: a plain bitset (one thread) or an atomic one shared by
/// the chunks of a parallel request.
pub(crate) trait SeenRows {
    /// Marks `row`; true if it was not marked before.
    fn insert(&mut self, row: u32) -> bool;
    /// Hints that `row`'s word will be needed soon (the bitset of 10^7 rows is 1.25 MB: its words
    /// miss the cache as often as the rows do).
    fn prefetch(&self, row: u32);
}

impl SeenRows for &mut [u64] {
    #[inline(always)]
    fn insert(&mut self, row: u32) -> bool {
        let (w, bit) = (row as usize / 64, 1u64 << (row % 64));
        let fresh = self[w] & bit == 0;
        self[w] |= bit;
        fresh
    }

    #[inline(always)]
    fn prefetch(&self, row: u32) {
        let bytes: &[u8] = bytemuck::cast_slice(&self[..]);
        prefetch(bytes, row as usize / 8);
    }
}

impl SeenRows for &[AtomicU64] {
    #[inline(always)]
    fn insert(&mut self, row: u32) -> bool {
        let (w, bit) = (row as usize / 64, 1u64 << (row % 64));
        // Relaxed is enough: only the bit's own atomicity matters (exactly one chunk sees it fresh).
        self[w].fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    #[inline(always)]
    fn prefetch(&self, _row: u32) {
        // No byte view of atomics without `unsafe`; the shared bitset goes without the hint.
    }
}

/// How many resolved rows ahead the dedup step prefetches bitset words.
const SEEN_AHEAD: usize = 16;

/// Pass 1: resolves `candidates` to rows in `hits` (request order), dropping unknown ids (counted,
/// the first [`UNKNOWN_SAMPLE`] kept); then drops rows already in `seen` (counted as duplicates) in a
/// second, prefetching sweep over the resolved rows, so that bitset misses overlap too.
pub(crate) fn resolve<I: AsRef<[u8]>>(
    index: &IdIndex<I>,
    candidates: &[u64],
    mut seen: impl SeenRows,
    hits: &mut Vec<Hit>,
    stats: &mut RankStats,
) {
    let table = index.table();
    let table_bytes: &[u8] = bytemuck::cast_slice(table);
    let mask = index.mask();
    let slot = std::mem::size_of::<prerank_format::index::Slot>();
    let start = hits.len();
    hits.reserve(candidates.len());
    for (i, &id) in candidates.iter().enumerate() {
        if let Some(&ahead) = candidates.get(i + LOOKUP_AHEAD) {
            prefetch(table_bytes, (mix64(ahead) as usize & mask) * slot);
        }
        match lookup(table, mask, id) {
            Some(row) => hits.push(Hit { row, item_id: id }),
            None => {
                stats.unknown += 1;
                if stats.unknown_sample.len() < UNKNOWN_SAMPLE {
                    stats.unknown_sample.push(id);
                }
            }
        }
    }
    // Dedup in place, keeping the first occurrence of each row (request order is preserved).
    let mut kept = start;
    for j in start..hits.len() {
        if let Some(ahead) = hits.get(j + SEEN_AHEAD) {
            seen.prefetch(ahead.row);
        }
        let hit = hits[j];
        if seen.insert(hit.row) {
            hits[kept] = hit;
            kept += 1;
        } else {
            stats.duplicates += 1;
        }
    }
    hits.truncate(kept);
}

/// Reference dot product (sequential f64 accumulation).
pub fn dot_scalar(u: &[f32], row: RowRef<'_>) -> f32 {
    match row {
        RowRef::F32(v) => u
            .iter()
            .zip(v)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum::<f64>() as f32,
        RowRef::F16(v) => u
            .iter()
            .zip(v)
            .map(|(a, b)| f64::from(*a) * f64::from(b.to_f32()))
            .sum::<f64>() as f32,
        RowRef::Int8 { values, scale } => {
            let s: f64 = u
                .iter()
                .zip(values)
                .map(|(a, q)| f64::from(*a) * f64::from(*q))
                .sum();
            (s * f64::from(scale)) as f32
        }
    }
}

/// Fast dot product on the stored type (no per-row decode buffer). Bit-identical to what
/// [`score_rows`] computes for the same row.
#[inline]
pub fn dot_fast(u: &[f32], row: RowRef<'_>) -> f32 {
    match row {
        RowRef::F32(v) => dot_f32(u, v),
        RowRef::F16(v) => dot_f16(u, bytemuck::cast_slice(v)),
        RowRef::Int8 { values, scale } => dot_i8(u, values) * scale,
    }
}

/// 2^112 as f32: rescales an f16 exponent (bias 15) placed in an f32 (bias 127).
const F16_RESCALE: f32 = f32::from_bits((127 + 112) << 23);

/// Exact f16 -> f32 for every finite f16, normal or subnormal, in a few vectorisable integer and
/// float operations (the "magic multiply" conversion). Infinities and NaN are not handled: stored rows
/// are checked finite at load.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let magnitude = f32::from_bits(u32::from(h & 0x7fff) << 13) * F16_RESCALE;
    f32::from_bits(magnitude.to_bits() | (u32::from(h & 0x8000) << 16))
}

const LANES: usize = 16;

/// The dot-product bodies, generic over the element conversion; always inlined into a
/// multiversioned caller so they are compiled for its target features.
#[inline(always)]
fn dot_body<const FOLD: bool, T: Copy>(a: &[f32], b: &[T], conv: impl Fn(T) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * conv(y[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * conv(*y);
    }
    if FOLD {
        // Fold the two halves with one vector add, then sum 8 lanes: a serial chain of 8 scalar
        // adds per row instead of 16. Measured faster for f16 only: for f32 and int8 (and for a
        // full pairwise reduction, 16 -> 8 -> 4 -> 1, for all three) LLVM then vectorises the main
        // loop at 2 lanes instead of 8 and the row time doubles.
        let half: [f32; LANES / 2] = std::array::from_fn(|l| acc[l] + acc[l + LANES / 2]);
        half.iter().sum::<f32>() + tail
    } else {
        acc.iter().sum::<f32>() + tail
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_f16(a: &[f32], h: &[u16]) -> f32 {
    dot_body::<true, _>(a, h, f16_bits_to_f32)
}

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_body::<false, _>(a, b, |x| x)
}

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_i8(a: &[f32], q: &[i8]) -> f32 {
    dot_body::<false, _>(a, q, f32::from)
}

/// Descending score, then ascending id: the documented result order.
#[inline]
pub(crate) fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.item_id.cmp(&b.item_id))
}

/// Bounded top-k buffer with a threshold filter (module doc). Holds a superset of the k best pushed
/// so far; [`TopK::finish`] orders them.
#[derive(Debug)]
pub(crate) struct TopK<'a> {
    buf: &'a mut Vec<Scored>,
    k: usize,
    /// The k-th best score after the last shrink; anything strictly below it is dropped.
    threshold: f32,
}

impl<'a> TopK<'a> {
    pub(crate) fn new(buf: &'a mut Vec<Scored>, k: usize) -> Self {
        buf.clear();
        TopK {
            buf,
            k,
            threshold: f32::NEG_INFINITY,
        }
    }

    fn capacity(&self) -> usize {
        (4 * self.k).max(1024)
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, s: Scored) {
        // Keeps NaN scores too (incomparable), as a full sort with `total_cmp` would rank them.
        if s.score >= self.threshold || s.score.is_nan() {
            self.buf.push(s);
            if self.buf.len() >= self.capacity() {
                self.shrink();
            }
        }
    }

    fn shrink(&mut self) {
        if self.k == 0 {
            self.buf.clear();
            self.threshold = f32::INFINITY;
            return;
        }
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, better);
            self.buf.truncate(self.k);
            // Every kept score is >= the k-th one; ties stay (they may win on the id).
            self.threshold = self.buf[self.k - 1].score;
            if self.threshold.is_nan() {
                self.threshold = f32::NEG_INFINITY;
            }
        }
    }

    /// The k best, ordered (descending score, then ascending id).
    pub(crate) fn finish(mut self) -> Vec<Scored> {
        self.shrink();
        let k = self.k.min(self.buf.len());
        let top = &mut self.buf[..k];
        top.sort_unstable_by(better);
        top.to_vec()
    }

    /// Appends the unordered survivors (at most k after a shrink) to `out`.
    pub(crate) fn drain_into(mut self, out: &mut Vec<Scored>) {
        self.shrink();
        out.extend_from_slice(self.buf);
    }
}

/// Where the rows of one dtype are in the mapped file: what pass 2's loops need, resolved once per
/// call by [`ItemStore`].
#[derive(Debug, Clone, Copy)]
struct RowBytes<'a> {
    /// The rows, `stride` bytes apart.
    body: &'a [u8],
    stride: usize,
    /// Bytes of a row that are read (values, and the int8 scale).
    payload: usize,
    /// Offset of an int8 row's f32 scale inside the row (after the values, 4-aligned).
    scale_at: usize,
    /// Rows prefetched ahead ([`rows_ahead`]).
    ahead: usize,
}

impl RowBytes<'_> {
    /// Requests every cache line of `row` (a hint; out-of-range rows are ignored by `prefetch`).
    #[inline(always)]
    fn prefetch(&self, row: u32) {
        let base = row as usize * self.stride;
        let mut line = 0;
        while line < self.payload {
            prefetch(self.body, base + line);
            line += 64;
        }
    }

    /// The payload bytes of `row`.
    #[inline(always)]
    fn payload(&self, row: u32) -> &[u8] {
        let base = row as usize * self.stride;
        &self.body[base..base + self.payload]
    }

    /// The scale of an int8 row, given its payload.
    #[inline(always)]
    fn int8_scale(&self, raw: &[u8]) -> f32 {
        let at = self.scale_at;
        f32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
    }
}

/// Pass 2 for one dtype: scores `hits` (rows laid out as `rows` says) and pushes `tau * dot` into
/// `top`, prefetching `rows.ahead` rows ahead. Multiversioned once per call.
macro_rules! score_loop {
    ($name:ident, $elem:ty, $conv:expr, $int8:expr, $fold:expr) => {
        #[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
        fn $name<'t, 'r>(
            u: &[f32],
            tau: f32,
            rows: RowBytes<'r>,
            hits: &[Hit],
            top: &mut TopK<'t>,
        ) {
            let dim = u.len();
            let elem = std::mem::size_of::<$elem>();
            for (j, hit) in hits.iter().enumerate() {
                if let Some(next) = hits.get(j + rows.ahead) {
                    rows.prefetch(next.row);
                }
                let raw = rows.payload(hit.row);
                let values: &[$elem] = bytemuck::cast_slice(&raw[..dim * elem]);
                let mut dot = dot_body::<$fold, _>(u, values, $conv);
                if $int8 {
                    dot *= rows.int8_scale(raw);
                }
                top.push(Scored {
                    item_id: hit.item_id,
                    score: tau * dot,
                });
            }
        }
    };
}

score_loop!(score_f32, f32, |x| x, false, false);
score_loop!(score_f16, u16, f16_bits_to_f32, false, true);
score_loop!(score_i8, i8, f32::from, true, false);

/// Pass 2: scores the resolved `hits` into `top` with `kernel`'s arithmetic.
pub(crate) fn score_rows<V: AsRef<[u8]>, I: AsRef<[u8]>>(
    store: ItemStore<'_, V, I>,
    query: &Query<'_>,
    hits: &[Hit],
    top: &mut TopK<'_>,
    kernel: Kernel,
) {
    let (u, tau) = (query.user, query.tau);
    match kernel {
        Kernel::Exact => {
            for hit in hits {
                top.push(Scored {
                    item_id: hit.item_id,
                    score: tau * dot_scalar(u, store.vectors.row(hit.row as usize)),
                });
            }
        }
        Kernel::Fast => {
            let rows = store.row_bytes();
            match store.dtype() {
                Dtype::F32 => score_f32(u, tau, rows, hits, top),
                Dtype::F16 => score_f16(u, tau, rows, hits, top),
                Dtype::Int8 => score_i8(u, tau, rows, hits, top),
            }
        }
    }
}

/// Scores `query.candidates` against `store` and returns the top `query.k` (fewer if fewer are
/// known).
///
/// `query.user` must have the store's dimension (checked at snapshot load).
pub fn rank<V: AsRef<[u8]>, I: AsRef<[u8]>>(
    store: ItemStore<'_, V, I>,
    query: &Query<'_>,
    kernel: Kernel,
    scratch: &mut Scratch,
) -> (Vec<Scored>, RankStats) {
    let mut stats = RankStats::default();
    let words = store.rows().div_ceil(64);
    if scratch.seen.len() < words {
        scratch.seen.resize(words, 0);
    }
    scratch.hits.clear();

    resolve(
        store.index,
        query.candidates,
        &mut scratch.seen[..],
        &mut scratch.hits,
        &mut stats,
    );
    for hit in &scratch.hits {
        scratch.seen[hit.row as usize / 64] = 0;
    }
    if query.k == 0 || scratch.hits.is_empty() {
        return (Vec::new(), stats);
    }
    let mut top = TopK::new(&mut scratch.top, query.k);
    score_rows(store, query, &scratch.hits, &mut top, kernel);
    (top.finish(), stats)
}

thread_local! {
    /// Per-thread scoring buffers of [`with_thread_scratch`].
    static THREAD_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`], reused by every request the thread serves (the blocking
/// pool's threads: a warm request allocates only its result). Not re-entrant: `f` must not call it.
pub fn with_thread_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    THREAD_SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prerank_format::vectors::{encode, Dtype};
    use proptest::prelude::*;

    fn unit(v: &mut [f32], dim: usize) {
        for r in v.chunks_exact_mut(dim) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            r.iter_mut().for_each(|x| *x /= n);
        }
    }

    proptest! {
        #[test]
        fn fast_kernel_matches_scalar(dim in 1usize..300, seed in any::<u64>()) {
            let mut rng = seed;
            let mut next = || { rng = prerank_format::index::mix64(rng.wrapping_add(1)); (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5 };
            let mut v: Vec<f32> = (0..dim * 3).map(|_| next()).collect();
            unit(&mut v, dim);
            let u: Vec<f32> = (0..dim).map(|_| next()).collect();
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
                let f = ItemVectors::parse(encode(dtype, dim, &v), "v").unwrap();
                for i in 0..3 {
                    let a = dot_scalar(&u, f.row(i));
                    let b = dot_fast(&u, f.row(i));
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()) * (dim as f32).sqrt(), "{dtype}: {a} vs {b}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The threshold-filtered top-k equals a full sort of every distinct known candidate, with
        /// every score bit-identical to [`dot_fast`]'s (for each dtype, and dimensions that leave
        /// only a tail, lanes and a tail, or whole lanes).
        #[test]
        fn topk_equals_full_sort(seed in any::<u64>(), n in 0usize..6_000, k in 0usize..2_500, levels in 1u32..50, dim_pick in 0usize..3) {
            let dim = [8, 40, 128][dim_pick];
            let items = 3_000usize;
            let mut v = Vec::with_capacity(items * dim);
            for i in 0..items {
                let c = (mix64(i as u64) % u64::from(levels)) as usize;
                let mut r: Vec<f32> = (0..dim).map(|d| ((c * 5 + d * 3) % 11) as f32 - 5.0).collect();
                unit(&mut r, dim);
                v.extend_from_slice(&r);
            }
            let ids: Vec<u64> = (0..items as u64).map(|i| 7 + i * 2).collect();
            let idx = IdIndex::parse(aligned(&prerank_format::index::encode(&ids).unwrap()), "i").unwrap();
            let mut r = seed;
            let cands: Vec<u64> = (0..n).map(|_| { r = mix64(r.wrapping_add(1)); if r % 9 == 0 { r % 5 } else { ids[(r >> 9) as usize % items] } }).collect();
            // Full-mantissa user values, so that a different summation order would round differently.
            let u: Vec<f32> = (0..dim).map(|d| (mix64(seed ^ d as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
                let vecs = ItemVectors::parse(encode(dtype, dim, &v), "v").unwrap();
                let query = Query { user: &u, tau: 2.0, candidates: &cands, k };
                let (top, stats) = rank(ItemStore::new(&vecs, &idx), &query, Kernel::Fast, &mut Scratch::default());
                let mut seen = std::collections::HashSet::new();
                let mut all: Vec<Scored> = cands.iter().filter_map(|&id| {
                    let row = ids.iter().position(|&x| x == id)?;
                    seen.insert(id).then(|| Scored { item_id: id, score: 2.0 * dot_fast(&u, vecs.row(row)) })
                }).collect();
                all.sort_by(better);
                all.truncate(k);
                prop_assert_eq!(top, all, "{}", dtype);
                prop_assert_eq!(stats.unknown, cands.iter().filter(|&&id| id < 7).count());
            }
        }
    }

    #[test]
    fn f16_conversion_is_exact_for_every_finite_value() {
        for h in 0..=u16::MAX {
            let x = half::f16::from_bits(h);
            if x.is_finite() {
                assert_eq!(
                    f16_bits_to_f32(h).to_bits(),
                    x.to_f32().to_bits(),
                    "f16 bits {h:#06x}"
                );
            }
        }
    }

    #[test]
    fn topk_order_ties_unknown_and_duplicates() {
        let dim = 4;
        // Rows 0 and 2 are identical, so ids 10 and 30 tie; ties go to the smaller id.
        let v = vec![
            1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.6, 0.8, 0.0, 0.0,
        ];
        let vecs = ItemVectors::parse(encode(Dtype::F32, dim, &v), "v").unwrap();
        let idx_bytes = prerank_format::index::encode(&[10, 20, 30, 40]).unwrap();
        let idx = IdIndex::parse(aligned(&idx_bytes), "i").unwrap();
        let u = [1.0, 0.0, 0.0, 0.0];
        let mut s = Scratch::default();
        let store = ItemStore::new(&vecs, &idx);
        for kernel in [Kernel::Exact, Kernel::Fast] {
            let query = Query {
                user: &u,
                tau: 2.0,
                candidates: &[30, 99, 20, 10, 40, 30, 98],
                k: 3,
            };
            let (top, stats) = rank(store, &query, kernel, &mut s);
            assert_eq!(
                top,
                vec![
                    Scored {
                        item_id: 10,
                        score: 2.0
                    },
                    Scored {
                        item_id: 30,
                        score: 2.0
                    },
                    Scored {
                        item_id: 40,
                        score: 1.2
                    },
                ]
            );
            assert_eq!(stats.unknown, 2);
            assert_eq!(stats.unknown_sample, vec![99, 98]);
            assert_eq!(stats.duplicates, 1);
            // k larger than the known candidates returns them all.
            let query = Query {
                user: &u,
                tau: 1.0,
                candidates: &[20, 40],
                k: 10,
            };
            let (all, _) = rank(store, &query, kernel, &mut s);
            assert_eq!(
                all.iter().map(|s| s.item_id).collect::<Vec<_>>(),
                vec![40, 20]
            );
        }
    }

    /// Copies bytes into u64-aligned storage (the index parser checks 8-byte alignment).
    pub(crate) fn aligned(bytes: &[u8]) -> AlignedBytes {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes(v, bytes.len())
    }

    pub(crate) struct AlignedBytes(Vec<u64>, usize);
    impl AsRef<[u8]> for AlignedBytes {
        fn as_ref(&self) -> &[u8] {
            &bytemuck::cast_slice(&self.0)[..self.1]
        }
    }
}
