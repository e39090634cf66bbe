//! The item id index (`items.idx`): u64 item id -> row, memory-mapped, O(1) expected lookups.
//!
//! An open-addressing hash table with linear probing, stored as-is on disk so that opening it costs
//! nothing, followed by the ids in row order (for `prerank inspect --ids` and row -> id).
//!
//! ```text
//! offset size field
//!      0    8 magic        b"PRRKIDX\0"
//!      8    4 version      u32 = 1
//!     12    4 reserved     zero
//!     16    8 count        u64, number of items (< 2^32 - 1)
//!     24    8 slots        u64, a power of two > count (the writer uses >= 2 * count, min 16)
//!     32    8 table_offset u64 = 64
//!     40    8 ids_offset   u64 = 64 + 16 * slots
//!     48   16 reserved     zero
//! table: slots entries of 16 bytes: key u64, row u32, reserved u32 (zero); row = 0xFFFF_FFFF marks empty
//! ids:   count u64, the id of row 0, 1, ...
//! ```
//!
//! Slot of an id: `mix64(id) & (slots - 1)`, then +1 (wrapping) until the key or an empty slot is found.
//! `mix64` is the SplitMix64 finaliser (documented in the spec, fixed forever for version 1).

use crate::vectors::{check_magic, check_reserved, check_version, read_u64};
use crate::{FormatError, HEADER_LEN};

/// Magic bytes of an id index file.
pub const MAGIC: &[u8; 8] = b"PRRKIDX\0";
/// Marker of an empty slot in the `row` field.
pub const EMPTY: u32 = u32::MAX;

/// The SplitMix64 finaliser: a fixed, well-mixing bijection on u64.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One table slot as stored.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Slot {
    pub key: u64,
    pub row: u32,
    pub reserved: u32,
}

/// A parsed id index over any byte container.
#[derive(Debug)]
pub struct IdIndex<B> {
    bytes: B,
    file: String,
    count: usize,
    slots: usize,
    ids_offset: usize,
}

impl<B: AsRef<[u8]>> IdIndex<B> {
    /// Parses the header and checks sizes and alignment. Cheap: reads 64 bytes.
    pub fn parse(bytes: B, file: &str) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        check_magic(file, b, MAGIC)?;
        check_version(file, b)?;
        if b[12..16].iter().any(|&x| x != 0) {
            return Err(FormatError::invalid(
                file,
                "reserved header bytes are not zero",
            ));
        }
        check_reserved(file, b, 48)?;
        let count = read_u64(b, 16);
        let slots = read_u64(b, 24);
        let table_offset = read_u64(b, 32);
        let ids_offset = read_u64(b, 40);
        if count >= u64::from(EMPTY) {
            return Err(FormatError::mismatch(file, "count", "< 2^32 - 1", count));
        }
        if !slots.is_power_of_two() || slots <= count {
            return Err(FormatError::mismatch(
                file,
                "slots",
                format!("a power of two > {count}"),
                slots,
            ));
        }
        if table_offset != HEADER_LEN as u64 {
            return Err(FormatError::mismatch(
                file,
                "table_offset",
                HEADER_LEN,
                table_offset,
            ));
        }
        let want_ids = slots
            .checked_mul(16)
            .and_then(|t| t.checked_add(HEADER_LEN as u64))
            .ok_or_else(|| FormatError::invalid(file, "slots * 16 overflows"))?;
        if ids_offset != want_ids {
            return Err(FormatError::mismatch(
                file,
                "ids_offset",
                want_ids,
                ids_offset,
            ));
        }
        let want_len = ids_offset + count * 8;
        if b.len() as u64 != want_len {
            return Err(FormatError::Size {
                file: file.into(),
                expected: want_len,
                found: b.len() as u64,
            });
        }
        if !(b.as_ptr() as usize).is_multiple_of(8) {
            return Err(FormatError::invalid(
                file,
                "file is not 8-byte aligned in memory",
            ));
        }
        Ok(IdIndex {
            file: file.to_string(),
            count: count as usize,
            slots: slots as usize,
            ids_offset: ids_offset as usize,
            bytes,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The hash table, `slots` entries.
    pub fn table(&self) -> &[Slot] {
        bytemuck::cast_slice(&self.bytes.as_ref()[HEADER_LEN..self.ids_offset])
    }

    /// Item ids in row order.
    pub fn ids(&self) -> &[u64] {
        bytemuck::cast_slice(&self.bytes.as_ref()[self.ids_offset..])
    }

    /// `slots - 1`, for callers that probe the table themselves (prefetching kernels).
    pub fn mask(&self) -> usize {
        self.slots - 1
    }

    /// The row of `id`, if the snapshot has it.
    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        lookup(self.table(), self.slots - 1, id)
    }

    /// Full check: every id of the ids array resolves to its own row and the table holds exactly
    /// `count` entries, all with rows < count. O(count); run at load.
    pub fn verify(&self) -> Result<(), FormatError> {
        let table = self.table();
        let occupied = table.iter().filter(|s| s.row != EMPTY).count();
        if occupied != self.count {
            return Err(FormatError::mismatch(
                &self.file,
                "occupied slots",
                self.count,
                occupied,
            ));
        }
        if table
            .iter()
            .any(|s| s.row != EMPTY && (s.row as usize >= self.count || s.reserved != 0))
        {
            return Err(FormatError::invalid(
                &self.file,
                "a slot points past the last row",
            ));
        }
        for (row, &id) in self.ids().iter().enumerate() {
            match self.get(id) {
                Some(r) if r as usize == row => {}
                found => {
                    return Err(FormatError::mismatch(
                        &self.file,
                        &format!("lookup of id {id}"),
                        format!("row {row}"),
                        format!("{found:?}"),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Linear-probing lookup over a table slice (shared by [`IdIndex::get`] and the serving kernels).
#[inline]
pub fn lookup(table: &[Slot], mask: usize, id: u64) -> Option<u32> {
    let mut i = mix64(id) as usize & mask;
    loop {
        let s = table[i];
        if s.row == EMPTY {
            return None;
        }
        if s.key == id {
            return Some(s.row);
        }
        i = (i + 1) & mask;
    }
}

/// Builds an index file for `ids` (row i has id `ids[i]`). Fails on duplicate ids.
pub fn encode(ids: &[u64]) -> Result<Vec<u8>, String> {
    if ids.len() as u64 >= u64::from(EMPTY) {
        return Err(format!("too many items: {}", ids.len()));
    }
    let slots = (ids.len() * 2).max(16).next_power_of_two();
    let mask = slots - 1;
    let mut table = vec![
        Slot {
            key: 0,
            row: EMPTY,
            reserved: 0
        };
        slots
    ];
    for (row, &id) in ids.iter().enumerate() {
        let mut i = mix64(id) as usize & mask;
        loop {
            if table[i].row == EMPTY {
                table[i] = Slot {
                    key: id,
                    row: row as u32,
                    reserved: 0,
                };
                break;
            }
            if table[i].key == id {
                return Err(format!(
                    "duplicate item id {id} (rows {} and {row})",
                    table[i].row
                ));
            }
            i = (i + 1) & mask;
        }
    }
    let ids_offset = HEADER_LEN + slots * 16;
    let mut out = Vec::with_capacity(ids_offset + ids.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    out.extend_from_slice(&(slots as u64).to_le_bytes());
    out.extend_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    out.extend_from_slice(&(ids_offset as u64).to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(bytemuck::cast_slice(&table));
    out.extend_from_slice(bytemuck::cast_slice(ids));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Vec<u64>` storage guarantees the 8-byte alignment the parser checks.
    fn aligned(bytes: Vec<u8>) -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(&bytes);
        v
    }

    struct Bytes(Vec<u64>, usize);
    impl AsRef<[u8]> for Bytes {
        fn as_ref(&self) -> &[u8] {
            &bytemuck::cast_slice(&self.0)[..self.1]
        }
    }

    fn parse(bytes: Vec<u8>) -> Result<IdIndex<Bytes>, FormatError> {
        let n = bytes.len();
        IdIndex::parse(Bytes(aligned(bytes), n), "items.idx")
    }

    #[test]
    fn duplicates_are_refused() {
        assert!(encode(&[1, 2, 1])
            .unwrap_err()
            .contains("duplicate item id 1"));
    }

    #[test]
    fn corrupt_slot_is_caught_by_verify() {
        let mut b = encode(&[10, 20, 30]).unwrap();
        let idx = parse(b.clone()).unwrap();
        let slot = idx
            .table()
            .iter()
            .position(|s| s.key == 20 && s.row == 1)
            .unwrap();
        b[HEADER_LEN + slot * 16 + 8] = 2; // point id 20 at row 2
        assert!(parse(b).unwrap().verify().is_err());
    }

    proptest::proptest! {
        #[test]
        fn every_id_finds_its_row(ids in proptest::collection::hash_set(proptest::prelude::any::<u64>(), 0..500),
                                  probes in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..50)) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let idx = parse(encode(&ids).unwrap()).unwrap();
            idx.verify().unwrap();
            proptest::prop_assert_eq!(idx.ids(), &ids[..]);
            for (row, id) in ids.iter().enumerate() {
                proptest::prop_assert_eq!(idx.get(*id), Some(row as u32));
            }
            for p in probes {
                proptest::prop_assert_eq!(idx.get(p), ids.iter().position(|i| *i == p).map(|r| r as u32));
            }
        }
    }
}
