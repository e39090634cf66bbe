//! Candidate scoring: id lookup, dot products against the stored dtype, top-k.
//!
//! Pure and synchronous. For each candidate id: find its row in the id index (skip and count unknown
//! ids, score repeated ids once), compute `tau * <u, v_row>` directly on the stored f32 / f16 / int8
//! row, and keep the k best by partial selection (`select_nth_unstable`), ordered by descending score
//! and then ascending item id, so the result is deterministic.
//!
//! Two kernels compute the dot products: [`dot_scalar`], the obviously-correct reference, and
//! [`dot_fast`], written for the auto-vectoriser with several independent accumulators and compiled
//! in several versions by `multiversion` (AVX2+FMA, AVX-512, baseline) with run-time dispatch, so a
//! portable build still uses the host's widest SIMD. The two are property-tested against each other.
//! Per-request buffers live in a [`Scratch`] that callers reuse across requests.
//!
//! Memory, not arithmetic, bounds this code: each candidate costs a random read in the id table and
//! one in the item file. [`rank`] therefore works in two passes, each issuing software prefetches a
//! fixed distance ahead so that many cache misses are in flight at once: pass 1 resolves ids to rows
//! (prefetching the table slot of candidate `i + LOOKUP_AHEAD`), pass 2 scores the rows (prefetching
//! every cache line of row `j + ROWS_AHEAD`).

use multiversion::multiversion;
use prerank_format::index::{lookup, mix64, IdIndex};
use prerank_format::mmap::prefetch;
use prerank_format::vectors::{ItemVectors, RowRef};

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
    scored: Vec<Scored>,
    /// Resolved (row, item id) of the known, distinct candidates, in request order.
    hits: Vec<(u32, u64)>,
    /// One bit per item row, to detect repeated candidates; cleared after each call.
    seen: Vec<u64>,
}

/// How many candidates ahead pass 1 prefetches id-table slots.
const LOOKUP_AHEAD: usize = 16;
/// How many rows ahead pass 2 prefetches item rows.
const ROWS_AHEAD: usize = 8;

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

/// Fast dot product on the stored type (no per-row decode buffer).
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

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_f16(a: &[f32], h: &[u16]) -> f32 {
    let n = a.len().min(h.len());
    let (a, h) = (&a[..n], &h[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut ch = h.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut ch) {
        for l in 0..LANES {
            acc[l] += x[l] * f16_bits_to_f32(y[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(ch.remainder()) {
        tail += x * f16_bits_to_f32(*y);
    }
    acc.iter().sum::<f32>() + tail
}

const LANES: usize = 16;

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_i8(a: &[f32], q: &[i8]) -> f32 {
    let n = a.len().min(q.len());
    let (a, q) = (&a[..n], &q[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cq = q.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cq) {
        for l in 0..LANES {
            acc[l] += x[l] * f32::from(y[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cq.remainder()) {
        tail += x * f32::from(*y);
    }
    acc.iter().sum::<f32>() + tail
}

/// Descending score, then ascending id: the documented result order.
#[inline]
fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.item_id.cmp(&b.item_id))
}

/// Scores `candidates` against `vectors` and returns the top `k` (fewer if fewer are known).
///
/// `u` must have the vectors' dimension (checked at snapshot load). `fast` selects [`dot_fast`] over
/// [`dot_scalar`].
pub fn rank<V: AsRef<[u8]>, I: AsRef<[u8]>>(
    u: &[f32],
    tau: f32,
    vectors: &ItemVectors<V>,
    index: &IdIndex<I>,
    candidates: &[u64],
    k: usize,
    scratch: &mut Scratch,
    fast: bool,
) -> (Vec<Scored>, RankStats) {
    let mut stats = RankStats::default();
    let words = vectors.count().div_ceil(64);
    if scratch.seen.len() < words {
        scratch.seen.resize(words, 0);
    }
    scratch.scored.clear();
    scratch.hits.clear();

    // Pass 1: ids -> rows, dropping unknown and repeated ids.
    let table = index.table();
    let table_bytes: &[u8] = bytemuck::cast_slice(table);
    let mask = index.mask();
    for (i, &id) in candidates.iter().enumerate() {
        if let Some(&ahead) = candidates.get(i + LOOKUP_AHEAD) {
            prefetch(
                table_bytes,
                (mix64(ahead) as usize & mask) * std::mem::size_of_val(&table[0]),
            );
        }
        let Some(row) = lookup(table, mask, id) else {
            stats.unknown += 1;
            if stats.unknown_sample.len() < UNKNOWN_SAMPLE {
                stats.unknown_sample.push(id);
            }
            continue;
        };
        let (w, bit) = (row as usize / 64, 1u64 << (row % 64));
        if scratch.seen[w] & bit != 0 {
            stats.duplicates += 1;
            continue;
        }
        scratch.seen[w] |= bit;
        scratch.hits.push((row, id));
    }
    for &(row, _) in &scratch.hits {
        scratch.seen[row as usize / 64] = 0;
    }

    // Pass 2: score the rows.
    let body = vectors.body();
    let stride = vectors.row_stride();
    let payload = vectors.dtype().payload_bytes(vectors.dim());
    scratch.scored.reserve(scratch.hits.len());
    for (j, &(row, id)) in scratch.hits.iter().enumerate() {
        if let Some(&(ahead, _)) = scratch.hits.get(j + ROWS_AHEAD) {
            let base = ahead as usize * stride;
            for line in (0..payload).step_by(64) {
                prefetch(body, base + line);
            }
        }
        let r = vectors.row(row as usize);
        let dot = if fast {
            dot_fast(u, r)
        } else {
            dot_scalar(u, r)
        };
        scratch.scored.push(Scored {
            item_id: id,
            score: tau * dot,
        });
    }
    let scored = &mut scratch.scored;
    let k = k.min(scored.len());
    if k == 0 {
        return (Vec::new(), stats);
    }
    if k < scored.len() {
        scored.select_nth_unstable_by(k - 1, better);
    }
    let mut top = scored[..k].to_vec();
    top.sort_unstable_by(better);
    (top, stats)
}

#[cfg(test)]
mod tests {
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
        for fast in [false, true] {
            let (top, stats) = rank(
                &u,
                2.0,
                &vecs,
                &idx,
                &[30, 99, 20, 10, 40, 30, 98],
                3,
                &mut s,
                fast,
            );
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
            let (all, _) = rank(&u, 1.0, &vecs, &idx, &[20, 40], 10, &mut s, fast);
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
