//! What the kernel actually granted: transparent-huge-page mode, and per mapped snapshot file how many
//! of its bytes are resident and how many are backed by huge pages.
//!
//! `MADV_HUGEPAGE` is advice. Anonymous memory (`--load-mode copy`) gets huge pages when THP is in
//! `always` or `madvise` mode and 2 MiB-aligned free memory exists (`AnonHugePages`); file-backed
//! mappings (`--load-mode mmap`) only on file systems with large folios for the page cache
//! (`FilePmdMapped`; ext4 on most kernels gives none). The numbers are read from `/proc/self/smaps`
//! over each file's exact address range, so two maps of the same file (an old and a new version, or a
//! background verification) are never mixed. Linux only; elsewhere every figure is 0.

use prerank_format::reader::MappedFile;
use serde::Serialize;

/// Resident and huge-page-backed bytes of one mapped file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileUsage {
    pub file: String,
    pub mapped: u64,
    pub resident: u64,
    /// `AnonHugePages + FilePmdMapped` over the file's range.
    pub huge: u64,
}

/// The THP mode (`always`, `madvise`, `never`), or `unknown` when it cannot be read.
pub fn thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Usage of each of `maps` (same order), from `/proc/self/smaps`.
pub fn usage(maps: &[MappedFile]) -> Vec<FileUsage> {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    usage_from(&text, maps)
}

/// [`usage`] over a given smaps text (testable).
pub fn usage_from(smaps: &str, maps: &[MappedFile]) -> Vec<FileUsage> {
    let mut out: Vec<FileUsage> = maps
        .iter()
        .map(|m| FileUsage {
            file: m.file.clone(),
            mapped: m.len as u64,
            ..FileUsage::default()
        })
        .collect();
    // Indices of `maps` overlapping the current VMA.
    let mut current: Vec<usize> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if !first.ends_with(':') {
            current.clear();
            let Some((a, b)) = first.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            current.extend(
                maps.iter()
                    .enumerate()
                    .filter(|(_, m)| m.len > 0 && start < m.addr + m.len && m.addr < end)
                    .map(|(i, _)| i),
            );
            continue;
        }
        let kb = || -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => current.iter().for_each(|&i| out[i].resident += kb() * 1024),
            "AnonHugePages:" | "FilePmdMapped:" => {
                current.iter().for_each(|&i| out[i].huge += kb() * 1024)
            }
            _ => {}
        }
    }
    out
}

/// This process's resident set size in bytes (`VmRSS`), 0 if unknown.
pub fn process_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_the_exact_address_range() {
        let smaps = "\
7f0000000000-7f0000400000 r--s 00000000 fd:01 12 /m/items.int8.vec
Size:               4096 kB
Rss:                2048 kB
AnonHugePages:         0 kB
FilePmdMapped:      2048 kB
7f0000400000-7f0000800000 r--p 00000000 00:00 0
Rss:                4096 kB
AnonHugePages:      4096 kB
7f1000000000-7f1000001000 r--s 00000000 fd:01 12 /m/items.int8.vec
Rss:                   4 kB
";
        let maps = [
            MappedFile {
                file: "items.int8.vec".into(),
                addr: 0x7f00_0000_0000,
                len: 0x40_0000,
                prefaulted: false,
            },
            MappedFile {
                file: "copy".into(),
                addr: 0x7f00_0040_0000,
                len: 0x40_0000,
                prefaulted: true,
            },
        ];
        let u = usage_from(smaps, &maps);
        assert_eq!((u[0].resident, u[0].huge), (2048 * 1024, 2048 * 1024));
        assert_eq!((u[1].resident, u[1].huge), (4096 * 1024, 4096 * 1024));
        assert!(["always", "madvise", "never", "unknown"].contains(&thp_mode().as_str()));
    }
}
