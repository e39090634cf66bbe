//! Read-only memory maps: the only `unsafe` in prerank.
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
