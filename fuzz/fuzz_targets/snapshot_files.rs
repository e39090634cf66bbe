//! Arbitrary bytes as each snapshot file: the manifest parser and the binary parsers (item vectors,
//! id index, attributes, safetensors weights) and their full verification must reject bad input with an
//! error, never a panic or an out-of-bounds access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prerank_format::attrs::ItemAttributes;
use prerank_format::index::IdIndex;
use prerank_format::vectors::ItemVectors;
use prerank_format::weights::Weights;
use prerank_format::Manifest;

/// An 8-byte aligned copy of the input (real files are page-aligned mmaps; the parsers check alignment).
struct Aligned(Vec<u64>, usize);

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.0)[..self.1]
    }
}

fn aligned(data: &[u8]) -> Aligned {
    let mut v = vec![0u64; data.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..data.len()].copy_from_slice(data);
    Aligned(v, data.len())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Manifest::from_json(text) {
            let _ = m.expected_tensors();
        }
    }
    if let Ok(v) = ItemVectors::parse(aligned(data), "items.vec") {
        if v.count() <= 4096 {
            let _ = v.verify_rows();
        }
    }
    if let Ok(idx) = IdIndex::parse(aligned(data), "items.idx") {
        if idx.count() <= 4096 {
            let _ = idx.verify();
        }
        let _ = idx.get(42);
    }
    if let Ok(a) = ItemAttributes::parse(aligned(data), "items.attr") {
        if a.count() > 0 {
            let _ = a.row(a.count() - 1);
        }
    }
    if let Ok(w) = Weights::parse(aligned(data), "w.safetensors") {
        let names: Vec<String> = w.tensors().keys().cloned().collect();
        for n in names {
            let _ = w.get(&n);
        }
    }
});
