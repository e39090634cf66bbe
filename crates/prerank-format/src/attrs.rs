//! The item attribute file (`items.attr`): for each item row, the raw u64 values of the attributes the
//! user tower needs to embed a behaviour item given by id alone (category, shop, brand, ...).
//!
//! ```text
//! offset size field
//!      0    8 magic        b"PRRKATR\0"
//!      8    4 version      u32 = 1
//!     12    4 n_attrs      u32, = len(manifest items.attributes)
//!     16    8 count        u64, = items.count
//!     24    8 data_offset  u64 = 64
//!     32   32 reserved     zero
//! data: count * n_attrs u64, row-major (row i, attribute j at data_offset + 8 * (i * n_attrs + j))
//! ```
//!
//! Values are raw ids; they are hashed with the feature's spec like any request value (as the decimal
//! form of the u64).

use crate::vectors::{check_magic, check_reserved, check_version, read_u32, read_u64};
use crate::{FormatError, HEADER_LEN};

/// Magic bytes of an attribute file.
pub const MAGIC: &[u8; 8] = b"PRRKATR\0";

/// A parsed attribute file over any byte container.
#[derive(Debug)]
pub struct ItemAttributes<B> {
    bytes: B,
    n_attrs: usize,
    count: usize,
}

impl<B: AsRef<[u8]>> ItemAttributes<B> {
    pub fn parse(bytes: B, file: &str) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        check_magic(file, b, MAGIC)?;
        check_version(file, b)?;
        check_reserved(file, b, 32)?;
        let n_attrs = read_u32(b, 12) as u64;
        let count = read_u64(b, 16);
        let data_offset = read_u64(b, 24);
        if data_offset != HEADER_LEN as u64 {
            return Err(FormatError::mismatch(
                file,
                "data_offset",
                HEADER_LEN,
                data_offset,
            ));
        }
        let want = count
            .checked_mul(n_attrs)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .ok_or_else(|| FormatError::invalid(file, "count * n_attrs overflows"))?;
        if b.len() as u64 != want {
            return Err(FormatError::Size {
                file: file.into(),
                expected: want,
                found: b.len() as u64,
            });
        }
        if !(b.as_ptr() as usize).is_multiple_of(8) {
            return Err(FormatError::invalid(
                file,
                "file is not 8-byte aligned in memory",
            ));
        }
        Ok(ItemAttributes {
            bytes,
            n_attrs: n_attrs as usize,
            count: count as usize,
        })
    }

    pub fn n_attrs(&self) -> usize {
        self.n_attrs
    }
    pub fn count(&self) -> usize {
        self.count
    }

    /// Attribute values of row `row` (in manifest `items.attributes` order).
    pub fn row(&self, row: usize) -> &[u64] {
        let all: &[u64] = bytemuck::cast_slice(&self.bytes.as_ref()[HEADER_LEN..]);
        &all[row * self.n_attrs..(row + 1) * self.n_attrs]
    }
}

/// Encodes an attribute file; `values` is `count * n_attrs` row-major.
pub fn encode(n_attrs: usize, values: &[u64]) -> Vec<u8> {
    let count = values.len().checked_div(n_attrs).unwrap_or(0);
    encode_with_count(n_attrs, count, values)
}

/// Like [`encode`], with an explicit row count (needed when `n_attrs` is 0).
pub fn encode_with_count(n_attrs: usize, count: usize, values: &[u64]) -> Vec<u8> {
    assert_eq!(
        values.len(),
        count * n_attrs,
        "values must be count * n_attrs"
    );
    let mut out = Vec::with_capacity(HEADER_LEN + values.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(n_attrs as u32).to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    out.extend_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(bytemuck::cast_slice(values));
    out
}
