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
//! Because that contract is enforced by convention, not by the kernel, [`LoadMode::Copy`] exists: it
//! reads each file into anonymous memory (then made read-only), so a published file modified or
//! truncated in place later cannot reach the process at all; the price is the file's size in
//! resident memory and a full read at load. [`LoadMode::Mmap`] (the default) shares the page cache
//! and loads faster, and relies on the contract. Both give the same `Mmap` type.
//!
//! [`prefetch`] issues a cache prefetch hint for a byte of a slice. A prefetch never dereferences in
//! the language sense, never faults and has no architectural effect beyond the cache; it is `unsafe`
//! in `core::arch` only because it is a `#[target_feature]` function. We call it only on x86_64, where
//! the SSE feature it needs is part of the baseline target, and only with an in-bounds address.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::path::Path;

use memmap2::Mmap;

use crate::FormatError;

/// How snapshot files get into memory (module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// Memory-map the file (shared page cache; relies on published files being immutable).
    #[default]
    Mmap,
    /// Copy the file into private anonymous memory (immune to in-place changes of the file).
    Copy,
}

impl std::str::FromStr for LoadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mmap" => Ok(LoadMode::Mmap),
            "copy" => Ok(LoadMode::Copy),
            other => Err(format!(
                "unknown load mode {other:?} (expected mmap or copy)"
            )),
        }
    }
}

impl std::fmt::Display for LoadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadMode::Mmap => "mmap",
            LoadMode::Copy => "copy",
        })
    }
}

/// Loads `path` the way `mode` says: [`map_file`] or [`copy_file`].
pub fn load_file(path: &Path, huge_pages: bool, mode: LoadMode) -> Result<Mmap, FormatError> {
    match mode {
        LoadMode::Mmap => map_file(path, huge_pages),
        LoadMode::Copy => copy_file(path, huge_pages),
    }
}

/// Reads `path` into a private anonymous map, then makes it read-only. No `unsafe`: the memory is
/// the process's own, so later changes to the file cannot affect it. A file that shrinks while it is
/// read is an error (`UnexpectedEof`).
pub fn copy_file(path: &Path, huge_pages: bool) -> Result<Mmap, FormatError> {
    let mut file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    let len = usize::try_from(len).map_err(|_| {
        FormatError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large"),
        )
    })?;
    let mut anon = memmap2::MmapOptions::new()
        .len(len)
        .map_anon()
        .map_err(|e| FormatError::io(path, e))?;
    #[cfg(target_os = "linux")]
    if huge_pages && len > 0 {
        let _ = anon.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = huge_pages;
    file.read_exact(&mut anon[..])
        .map_err(|e| FormatError::io(path, e))?;
    anon.make_read_only().map_err(|e| FormatError::io(path, e))
}

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

/// Faults every page of `map` in now (the `--prefault` warm-up), so that the request path takes no
/// page faults on it: `MADV_POPULATE_READ` (Linux 5.14+; one call, the kernel reads ahead and maps the
/// pages), falling back to reading one byte per 4 KiB page. Returns the bytes made resident. For a
/// `Copy` map this is a no-op in effect (the pages are already private and resident).
pub fn prefault(map: &Mmap) -> usize {
    if map.is_empty() {
        return 0;
    }
    #[cfg(target_os = "linux")]
    if map.advise(memmap2::Advice::PopulateRead).is_ok() {
        return map.len();
    }
    let mut sum = 0u8;
    for page in map.iter().step_by(4096) {
        sum = sum.wrapping_add(*page);
    }
    std::hint::black_box(sum);
    map.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_load_modes_give_the_file_bytes_and_copy_is_immune_to_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mapped = load_file(&path, false, LoadMode::Mmap).unwrap();
        let copied = load_file(&path, true, LoadMode::Copy).unwrap();
        assert_eq!(&mapped[..], &bytes[..]);
        assert_eq!(&copied[..], &bytes[..]);
        drop(mapped); // reading a truncated map would SIGBUS; the copy is private memory
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(&copied[..], &bytes[..]);
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert!(load_file(&dir.path().join("empty"), false, LoadMode::Copy)
            .unwrap()
            .is_empty());
        assert_eq!("copy".parse::<LoadMode>(), Ok(LoadMode::Copy));
        assert!("mmapp".parse::<LoadMode>().is_err());
    }
}
