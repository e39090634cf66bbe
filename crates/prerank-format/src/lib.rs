//! # prerank-format: snapshot format v1
//!
//! The bottom layer of prerank: what a model snapshot looks like on disk, how to read it without
//! copying, and how to write one atomically. It depends on `std`, serde and a few format crates only
//! (no tokio, no axum), so the reference trainer and third-party exporters can use it without pulling in
//! the server. The normative description is `docs/snapshot-format.md`; this crate implements it.
//!
//! Map of the crate:
//! - [`features`]: the feature spec and the documented mapping from raw values to embedding rows
//!   (FNV-1a hashing, discretisation boundaries).
//! - [`manifest`]: `manifest.json` (serde types, validation, the expected tensor list).
//! - [`vectors`], [`index`], [`attrs`]: the three binary item files, each generic over its bytes
//!   (`B: AsRef<[u8]>`) so tests use a `Vec<u8>` and production an mmap.
//! - [`weights`]: zero-copy access to the f32 tensors of `user_tower.safetensors`.
//! - [`mmap`]: the only module with `unsafe` (mapping files read-only).
//! - [`reader`]: opening a version directory: structure, checksums, normalisation.
//! - [`writer`]: producing a version directory atomically (temp dir, fsync, rename).
//!
//! Invariants every reader relies on: files are little-endian, binary bodies start at 64-byte aligned
//! offsets, and a published version directory is never modified in place.

#[cfg(not(target_endian = "little"))]
compile_error!(
    "prerank-format reads little-endian files by casting bytes; big-endian hosts are not supported"
);

pub mod attrs;
pub mod error;
pub mod features;
pub mod index;
pub mod manifest;
pub mod mmap;
pub mod reader;
pub mod vectors;
pub mod weights;
pub mod writer;

pub use error::FormatError;
pub use features::{fnv1a64, FeatureKind, FeatureSet, FeatureSpec, RawValue};
pub use manifest::{Architecture, GoldenCheck, GoldenItem, ItemsSpec, Manifest, VectorFile};
pub use reader::{OpenOptions, SnapshotFiles};
pub use vectors::Dtype;
pub use writer::{write_snapshot, SnapshotParts, Tensor};

/// The manifest `format_version` this crate writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest manifest `format_version` this crate reads.
pub const OLDEST_SUPPORTED_FORMAT_VERSION: u32 = 1;
/// Alignment of binary bodies and of every item row, in bytes (one cache line).
pub const ALIGN: usize = 64;
/// Size of the fixed header of every prerank binary file.
pub const HEADER_LEN: usize = 64;
