//! The item vector file (`items.<dtype>.vec`): one L2-normalised vector per item row.
//!
//! Layout (little-endian), see `docs/snapshot-format.md` section 6:
//!
//! ```text
//! offset size field
//!      0    8 magic         b"PRRKVEC\0"
//!      8    4 version       u32 = 1
//!     12    4 dtype         u32: 1 = f32, 2 = f16, 3 = int8
//!     16    8 count         u64, number of rows
//!     24    4 dim           u32
//!     28    4 row_stride    u32, bytes per row, a multiple of 64, >= the row payload
//!     32    8 data_offset   u64, a multiple of 64 (the writer uses 64)
//!     40   24 reserved      zero
//! data_offset + i * row_stride: row i
//! ```
//!
//! Row payload: f32 = `dim` f32; f16 = `dim` IEEE binary16; int8 = `dim` i8 followed, at byte
//! `round_up(dim, 4)`, by one f32 scale (value = q * scale, scale = max|v| / 127). Padding is zero.
//! Invariant after [`ItemVectors::parse`]: the file length is exactly `data_offset + count * row_stride`
//! and every row is addressable without further bounds checks beyond the slice's own.

use crate::{FormatError, ALIGN, HEADER_LEN};

/// Magic bytes of an item vector file.
pub const MAGIC: &[u8; 8] = b"PRRKVEC\0";
/// Current (and oldest supported) version of the item vector file layout.
pub const VERSION: u32 = 1;

/// Storage type of the item vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Int8,
}

impl Dtype {
    pub fn code(self) -> u32 {
        match self {
            Dtype::F32 => 1,
            Dtype::F16 => 2,
            Dtype::Int8 => 3,
        }
    }

    pub fn from_code(code: u32) -> Option<Dtype> {
        match code {
            1 => Some(Dtype::F32),
            2 => Some(Dtype::F16),
            3 => Some(Dtype::Int8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Int8 => "int8",
        }
    }

    /// Bytes of one row's payload (before padding to the stride).
    pub fn payload_bytes(self, dim: usize) -> usize {
        match self {
            Dtype::F32 => dim * 4,
            Dtype::F16 => dim * 2,
            Dtype::Int8 => dim.div_ceil(4) * 4 + 4,
        }
    }

    /// The row stride the writer uses: the payload rounded up to a whole number of cache lines.
    pub fn row_stride(self, dim: usize) -> usize {
        self.payload_bytes(dim).div_ceil(ALIGN) * ALIGN
    }

    /// How far from 1 a stored row's norm may be (quantisation error included).
    pub fn norm_tolerance(self) -> f32 {
        match self {
            Dtype::F32 => 1e-3,
            Dtype::F16 => 5e-3,
            Dtype::Int8 => 3e-2,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "int8" => Ok(Dtype::Int8),
            other => Err(format!(
                "unknown dtype {other:?} (expected f32, f16 or int8)"
            )),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed view of one stored row.
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    Int8 { values: &'a [i8], scale: f32 },
}

impl RowRef<'_> {
    /// Decodes the row to f32 (reference path; the scoring kernels read the stored type directly).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            RowRef::F32(v) => v.to_vec(),
            RowRef::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            RowRef::Int8 { values, scale } => {
                values.iter().map(|&q| f32::from(q) * scale).collect()
            }
        }
    }
}

/// A parsed item vector file over any byte container (an `Mmap` in production, a `Vec<u8>` in tests).
#[derive(Debug)]
pub struct ItemVectors<B> {
    bytes: B,
    /// Name used in error messages (the file name inside the version directory).
    file: String,
    dtype: Dtype,
    count: usize,
    dim: usize,
    stride: usize,
    data_offset: usize,
}

pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn check_magic(file: &str, bytes: &[u8], magic: &[u8; 8]) -> Result<(), FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Size {
            file: file.into(),
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    if &bytes[..8] != magic {
        return Err(FormatError::BadMagic {
            file: file.into(),
            expected: String::from_utf8_lossy(magic).into_owned(),
            found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
        });
    }
    Ok(())
}

pub(crate) fn check_version(file: &str, bytes: &[u8]) -> Result<(), FormatError> {
    let v = read_u32(bytes, 8);
    if v != VERSION {
        return Err(FormatError::UnsupportedVersion {
            file: file.into(),
            found: v,
            oldest: VERSION,
            newest: VERSION,
        });
    }
    Ok(())
}

pub(crate) fn check_reserved(file: &str, bytes: &[u8], from: usize) -> Result<(), FormatError> {
    if bytes[from..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(FormatError::invalid(
            file,
            "reserved header bytes are not zero",
        ));
    }
    Ok(())
}

impl<B: AsRef<[u8]>> ItemVectors<B> {
    /// Parses the header and checks the file's size and alignment. Cheap: reads 64 bytes.
    pub fn parse(bytes: B, file: &str) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        check_magic(file, b, MAGIC)?;
        check_version(file, b)?;
        let dtype = Dtype::from_code(read_u32(b, 12))
            .ok_or_else(|| FormatError::mismatch(file, "dtype", "1, 2 or 3", read_u32(b, 12)))?;
        let count = read_u64(b, 16);
        let dim = read_u32(b, 24) as usize;
        let stride = read_u32(b, 28) as usize;
        let data_offset = read_u64(b, 32);
        check_reserved(file, b, 40)?;
        if dim == 0 {
            return Err(FormatError::mismatch(file, "dim", "> 0", 0));
        }
        if !stride.is_multiple_of(ALIGN) || stride < dtype.payload_bytes(dim) {
            return Err(FormatError::mismatch(
                file,
                "row_stride",
                format!("a multiple of 64 >= {}", dtype.payload_bytes(dim)),
                stride,
            ));
        }
        if !data_offset.is_multiple_of(ALIGN as u64) || data_offset < HEADER_LEN as u64 {
            return Err(FormatError::mismatch(
                file,
                "data_offset",
                "a multiple of 64 >= 64",
                data_offset,
            ));
        }
        let expected = count
            .checked_mul(stride as u64)
            .and_then(|body| body.checked_add(data_offset))
            .ok_or_else(|| FormatError::invalid(file, "count * row_stride overflows"))?;
        if expected != b.len() as u64 {
            return Err(FormatError::Size {
                file: file.into(),
                expected,
                found: b.len() as u64,
            });
        }
        if !(b.as_ptr() as usize + data_offset as usize).is_multiple_of(4) {
            return Err(FormatError::invalid(
                file,
                "body is not 4-byte aligned in memory",
            ));
        }
        Ok(ItemVectors {
            file: file.to_string(),
            dtype,
            count: count as usize,
            dim,
            stride,
            data_offset: data_offset as usize,
            bytes,
        })
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn row_stride(&self) -> usize {
        self.stride
    }
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The whole body (all rows with their padding), for kernels that address rows themselves.
    pub fn body(&self) -> &[u8] {
        &self.bytes.as_ref()[self.data_offset..]
    }

    /// Row `i` as stored. Panics if `i >= count` (callers get rows from the id index).
    pub fn row(&self, i: usize) -> RowRef<'_> {
        let start = self.data_offset + i * self.stride;
        let raw = &self.bytes.as_ref()[start..start + self.stride];
        match self.dtype {
            Dtype::F32 => RowRef::F32(bytemuck::cast_slice(&raw[..self.dim * 4])),
            Dtype::F16 => RowRef::F16(bytemuck::cast_slice(&raw[..self.dim * 2])),
            Dtype::Int8 => {
                let at = self.dim.div_ceil(4) * 4;
                RowRef::Int8 {
                    values: bytemuck::cast_slice(&raw[..self.dim]),
                    scale: f32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]),
                }
            }
        }
    }

    /// Full check: every value finite and every row's L2 norm within the dtype's tolerance of 1.
    /// Reads the whole file once; run at load, never per request.
    pub fn verify_rows(&self) -> Result<(), FormatError> {
        let tol = self.dtype.norm_tolerance();
        for i in 0..self.count {
            let v = self.row(i).to_f32();
            let norm = v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt() as f32;
            if !norm.is_finite() || (norm - 1.0).abs() > tol {
                return Err(FormatError::NotNormalised {
                    file: self.file.clone(),
                    row: i as u64,
                    norm,
                    tolerance: tol,
                });
            }
        }
        Ok(())
    }
}

/// Quantises one normalised f32 row to int8 with its scale (the documented scheme).
pub fn quantize_int8(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    let q = v
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// Encodes a whole vector file (header + rows) for `vectors` (row-major, `count * dim`).
pub fn encode(dtype: Dtype, dim: usize, vectors: &[f32]) -> Vec<u8> {
    assert!(
        dim > 0 && vectors.len().is_multiple_of(dim),
        "vectors must be count * dim"
    );
    let count = vectors.len() / dim;
    let stride = dtype.row_stride(dim);
    let mut out = vec![0u8; HEADER_LEN + count * stride];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&dtype.code().to_le_bytes());
    out[16..24].copy_from_slice(&(count as u64).to_le_bytes());
    out[24..28].copy_from_slice(&(dim as u32).to_le_bytes());
    out[28..32].copy_from_slice(&(stride as u32).to_le_bytes());
    out[32..40].copy_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    for (i, v) in vectors.chunks_exact(dim).enumerate() {
        let row = &mut out[HEADER_LEN + i * stride..HEADER_LEN + (i + 1) * stride];
        match dtype {
            Dtype::F32 => {
                for (j, x) in v.iter().enumerate() {
                    row[j * 4..j * 4 + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            Dtype::F16 => {
                for (j, x) in v.iter().enumerate() {
                    row[j * 2..j * 2 + 2].copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
                }
            }
            Dtype::Int8 => {
                let (q, scale) = quantize_int8(v);
                for (j, x) in q.iter().enumerate() {
                    row[j] = *x as u8;
                }
                let at = dim.div_ceil(4) * 4;
                row[at..at + 4].copy_from_slice(&scale.to_le_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(count: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..count * dim)
            .map(|i| ((i * 37 % 101) as f32) - 50.0)
            .collect();
        for r in v.chunks_exact_mut(dim) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    #[test]
    fn strides_are_cache_line_multiples() {
        assert_eq!(Dtype::F32.row_stride(128), 512);
        assert_eq!(Dtype::F16.row_stride(128), 256);
        assert_eq!(Dtype::Int8.row_stride(128), 192);
        assert_eq!(Dtype::Int8.row_stride(3), 64);
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = encode(Dtype::F32, 8, &unit_rows(3, 8));
        b.truncate(b.len() - 1);
        let e = ItemVectors::parse(b, "items.vec").unwrap_err().to_string();
        assert!(e.contains("items.vec") && e.contains("expected"), "{e}");
        let mut b = encode(Dtype::F32, 8, &unit_rows(3, 8));
        b[0] = b'X';
        assert!(matches!(
            ItemVectors::parse(b, "v").unwrap_err(),
            FormatError::BadMagic { .. }
        ));
        let mut b = encode(Dtype::F32, 8, &unit_rows(3, 8));
        b[8] = 9;
        assert!(matches!(
            ItemVectors::parse(b, "v").unwrap_err(),
            FormatError::UnsupportedVersion { found: 9, .. }
        ));
        let mut b = encode(Dtype::F32, 8, &unit_rows(3, 8));
        b[50] = 1;
        assert!(ItemVectors::parse(b, "v").is_err());
    }

    #[test]
    fn non_normalised_row_is_rejected() {
        let mut v = unit_rows(4, 8);
        v[2 * 8] *= 3.0;
        let f = ItemVectors::parse(encode(Dtype::F32, 8, &v), "v").unwrap();
        let err = f.verify_rows().unwrap_err();
        assert!(
            matches!(err, FormatError::NotNormalised { row: 2, .. }),
            "unexpected {err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn roundtrip_every_dtype(count in 0usize..20, dim in 1usize..70, seed in 0u64..1000) {
            let mut v: Vec<f32> = (0..count * dim)
                .map(|i| (((i as u64 + 1) * (seed + 7) * 2654435761) % 1000) as f32 / 500.0 - 1.0 + 1e-3)
                .collect();
            for r in v.chunks_exact_mut(dim) {
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter_mut().for_each(|x| *x /= n);
            }
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Int8] {
                let f = ItemVectors::parse(encode(dtype, dim, &v), "v").unwrap();
                proptest::prop_assert_eq!(f.count(), count);
                proptest::prop_assert_eq!(f.dim(), dim);
                let tol = match dtype { Dtype::F32 => 0.0, Dtype::F16 => 1e-3, Dtype::Int8 => 1.0 / 127.0 };
                for i in 0..count {
                    let back = f.row(i).to_f32();
                    for (a, b) in back.iter().zip(&v[i * dim..(i + 1) * dim]) {
                        proptest::prop_assert!((a - b).abs() <= tol, "{dtype} row {i}: {a} vs {b}");
                    }
                }
                f.verify_rows().unwrap();
            }
        }
    }
}
