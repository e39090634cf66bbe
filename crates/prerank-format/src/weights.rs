//! Zero-copy access to the user-tower weights in `user_tower.safetensors`.
//!
//! Parsing uses the `safetensors` crate; this module adds what prerank requires on top: every tensor
//! is `F32`, 4-byte aligned in memory (true for files written by the reference `safetensors`
//! implementations, which pad the header to 8 bytes, mapped at a page boundary), and present with the
//! shape the manifest implies ([`crate::Manifest::expected_tensors`]), with no extras.

use std::collections::BTreeMap;
use std::ops::Range;

use safetensors::{Dtype as StDtype, SafeTensors};

use crate::FormatError;

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    /// Byte range of the data within the file.
    pub range: Range<usize>,
}

/// A parsed safetensors file over any byte container, exposing its tensors as `&[f32]`.
#[derive(Debug)]
pub struct Weights<B> {
    bytes: B,
    tensors: BTreeMap<String, TensorInfo>,
}

impl<B: AsRef<[u8]>> Weights<B> {
    pub fn parse(bytes: B, file: &str) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        let st = SafeTensors::deserialize(b).map_err(|e| {
            FormatError::invalid(file, format!("not a valid safetensors file: {e}"))
        })?;
        let base = b.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != StDtype::F32 {
                return Err(FormatError::mismatch(
                    file,
                    &format!("dtype of tensor {name}"),
                    "F32",
                    format!("{:?}", view.dtype()),
                ));
            }
            let data = view.data();
            let start = data.as_ptr() as usize - base;
            if !(data.as_ptr() as usize).is_multiple_of(4) {
                return Err(FormatError::invalid(
                    file,
                    format!("tensor {name} data is not 4-byte aligned (offset {start})"),
                ));
            }
            tensors.insert(
                name,
                TensorInfo {
                    shape: view.shape().to_vec(),
                    range: start..start + data.len(),
                },
            );
        }
        Ok(Weights { bytes, tensors })
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The data of tensor `name` and its shape.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        let t = self.tensors.get(name)?;
        Some((
            &t.shape,
            bytemuck::cast_slice(&self.bytes.as_ref()[t.range.clone()]),
        ))
    }

    /// The data of a tensor located earlier with [`Weights::tensors`] (no name lookup).
    pub fn data(&self, info: &TensorInfo) -> &[f32] {
        bytemuck::cast_slice(&self.bytes.as_ref()[info.range.clone()])
    }

    /// Checks that exactly the `expected` tensors are present with these shapes and finite values.
    pub fn check_against(
        &self,
        expected: &[(String, Vec<usize>)],
        file: &str,
    ) -> Result<(), FormatError> {
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => {
                    return Err(FormatError::mismatch(
                        file,
                        &format!("tensor {name}"),
                        "present",
                        "missing",
                    ))
                }
                Some(t) if &t.shape != shape => {
                    return Err(FormatError::mismatch(
                        file,
                        &format!("shape of tensor {name}"),
                        format!("{shape:?}"),
                        format!("{:?}", t.shape),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !expected.iter().any(|(n, _)| n == *k))
        {
            return Err(FormatError::invalid(
                file,
                format!("unexpected tensor {extra}"),
            ));
        }
        for name in self.tensors.keys() {
            if let Some((_, data)) = self.get(name) {
                if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                    return Err(FormatError::invalid(
                        file,
                        format!("tensor {name} has a non-finite value at flat index {i}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
