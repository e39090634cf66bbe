//! Opening a version directory: manifest, structure, checksums, normalisation.
//!
//! [`SnapshotFiles::open`] is the only way the service gets at snapshot bytes. It checks, in order of
//! cost: the manifest (schema and consistency), that every listed file exists with its listed size,
//! the headers of the binary files against the manifest, the tensor names and shapes; then, if asked
//! (always, when serving), the sha256 of every file and the full contents (normalised rows, index
//! integrity, finite weights). Each check runs once per load, never per request. The first failure is
//! returned as a [`FormatError`] naming the file and what was expected vs found.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::attrs::ItemAttributes;
use crate::index::IdIndex;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::mmap::load_file;
pub use crate::mmap::LoadMode;
use crate::vectors::{Dtype, ItemVectors};
use crate::weights::Weights;
use crate::FormatError;

/// What [`SnapshotFiles::open`] verifies beyond the cheap structural checks.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Recompute every file's sha256 and compare with the manifest.
    pub verify_checksums: bool,
    /// Read every row/slot/weight: norms, index integrity, finite weights.
    pub verify_contents: bool,
    /// Advise transparent huge pages on the item files.
    pub huge_pages: bool,
    /// Map the files, or copy them into private memory (see [`LoadMode`]).
    pub load_mode: LoadMode,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_checksums: true,
            verify_contents: true,
            huge_pages: true,
            load_mode: LoadMode::Mmap,
        }
    }
}

/// All files of one opened snapshot version, memory-mapped.
#[derive(Debug)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub weights: Weights<Mmap>,
    /// In manifest order; the first is the default dtype.
    pub vectors: Vec<ItemVectors<Mmap>>,
    pub index: IdIndex<Mmap>,
    pub attributes: ItemAttributes<Mmap>,
}

impl SnapshotFiles {
    /// Opens and checks the version directory `dir` (see the module doc).
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<SnapshotFiles, FormatError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| not_found_or_io(e, MANIFEST_FILE, &manifest_path))?;
        let manifest = Manifest::from_json(&text)?;

        let map = |file: &str, huge: bool| -> Result<Mmap, FormatError> {
            let path = dir.join(file);
            let meta = std::fs::metadata(&path).map_err(|e| not_found_or_io(e, file, &path))?;
            let want = manifest.files[file].bytes;
            if meta.len() != want {
                return Err(FormatError::Size {
                    file: file.into(),
                    expected: want,
                    found: meta.len(),
                });
            }
            let m = load_file(&path, huge, opts.load_mode)?;
            if opts.verify_checksums {
                let found = hex::encode(Sha256::digest(&m[..]));
                let expected = &manifest.files[file].sha256;
                if &found != expected {
                    return Err(FormatError::Checksum {
                        file: file.into(),
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            Ok(m)
        };

        let items = &manifest.items;
        let mut vectors = Vec::with_capacity(items.vectors.len());
        for vf in &items.vectors {
            let v = ItemVectors::parse(map(&vf.file, opts.huge_pages)?, &vf.file)?;
            if v.dtype() != vf.dtype {
                return Err(FormatError::mismatch(
                    &vf.file,
                    "dtype",
                    vf.dtype,
                    v.dtype(),
                ));
            }
            if v.count() as u64 != items.count {
                return Err(FormatError::mismatch(
                    &vf.file,
                    "count",
                    items.count,
                    v.count(),
                ));
            }
            if v.dim() != items.dim {
                return Err(FormatError::mismatch(&vf.file, "dim", items.dim, v.dim()));
            }
            if opts.verify_contents {
                v.verify_rows()?;
            }
            vectors.push(v);
        }

        let index = IdIndex::parse(map(&items.index_file, opts.huge_pages)?, &items.index_file)?;
        if index.count() as u64 != items.count {
            return Err(FormatError::mismatch(
                &items.index_file,
                "count",
                items.count,
                index.count(),
            ));
        }
        if opts.verify_contents {
            index.verify()?;
        }

        let attributes =
            ItemAttributes::parse(map(&items.attributes_file, false)?, &items.attributes_file)?;
        if attributes.count() as u64 != items.count {
            return Err(FormatError::mismatch(
                &items.attributes_file,
                "count",
                items.count,
                attributes.count(),
            ));
        }
        if attributes.n_attrs() != items.attributes.len() {
            return Err(FormatError::mismatch(
                &items.attributes_file,
                "n_attrs",
                items.attributes.len(),
                attributes.n_attrs(),
            ));
        }

        let weights = Weights::parse(map(&manifest.weights_file, false)?, &manifest.weights_file)?;
        weights.check_against(&manifest.expected_tensors(), &manifest.weights_file)?;

        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            manifest,
            weights,
            vectors,
            index,
            attributes,
        })
    }

    /// The vectors stored as `dtype`, if the snapshot has them.
    pub fn vectors_for(&self, dtype: Dtype) -> Option<&ItemVectors<Mmap>> {
        self.vectors.iter().find(|v| v.dtype() == dtype)
    }

    /// Total bytes mapped for this snapshot.
    pub fn mapped_bytes(&self) -> u64 {
        self.manifest.files.values().map(|f| f.bytes).sum()
    }
}

/// A missing file is reported by name; any other I/O error with its path.
fn not_found_or_io(e: std::io::Error, file: &str, path: &Path) -> FormatError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FormatError::MissingFile { file: file.into() }
    } else {
        FormatError::io(path, e)
    }
}
