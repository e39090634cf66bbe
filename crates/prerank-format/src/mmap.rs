//! Read-only memory maps and prefetch hints on them: the only `unsafe` in prerank.
//!
//! # Safety
//!
//! `memmap2::Mmap::map` is unsafe because the mapped bytes can change (or vanish, raising SIGBUS) if
//! another process modifies or truncates the file while it is mapped; Rust's `&[u8]` promise of
//! immutability would then be broken. prerank's snapshot contract makes published version directories
//! immutable: they are written to a temporary directory and renamed into place, never modified after
//! (see `docs/snapshot-format.md` section 1 and `docs/operations.md`). Replacing a version is done by
//! publishing a new directory, which creates new inodes; an old mapping keeps the old inode alive, so
//! `rm -r` or a new publish never invalidates a live map. Only an in-place write or truncate of a
//! published file, which the contract forbids, could. Everything else in the crate accesses the bytes
//! through safe, bounds- and alignment-checked casts (`bytemuck`).
//!
//! [`prefetch`] issues a cache prefetch hint for a byte of a slice. A prefetch never dereferences in
//! the language sense, never faults and has no architectural effect beyond the cache; it is `unsafe`
//! in `core::arch` only because it is a `#[target_feature]` function. We call it only on x86_64, where
//! the SSE feature it needs is part of the baseline target, and only with an in-bounds address.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::FormatError;

/// Maps `path` read-only. `huge_pages` asks the kernel for transparent huge pages on the mapping
/// (`MADV_HUGEPAGE`), which matters for random row reads over large item files; it is advice, so a
/// refusal is ignored. Empty files are mapped as an empty anonymous map (mmap of length 0 fails).
pub fn map_file(path: &Path, huge_pages: bool) -> Result<Mmap, FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return memmap2::MmapOptions::new()
            .len(0)
            .map_anon()
            .and_then(|m| m.make_read_only())
            .map_err(|e| FormatError::io(path, e));
    }
    // SAFETY: the file belongs to a published (immutable) snapshot version, see the module doc. The
    // map is read-only, so no Rust code can write through it either.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    #[cfg(target_os = "linux")]
    if huge_pages {
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = huge_pages;
    Ok(map)
}

/// Hints the CPU to bring the cache line holding `bytes[offset]` into L1. Out-of-range offsets are
/// ignored. A no-op on targets without a stable prefetch intrinsic.
#[inline(always)]
pub fn prefetch(bytes: &[u8], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(b) = bytes.get(offset) {
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in the baseline target
        // features); the pointer is derived from an in-bounds reference. Prefetching has no effect on
        // memory contents and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (b as *const u8).cast::<i8>(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, offset);
}
