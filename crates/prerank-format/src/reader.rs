//! Opening a version directory: manifest, structure, checksums, normalisation.
//!
//! [`SnapshotFiles::open`] is the only way the service gets at snapshot bytes. It checks, in order of
//! cost: the manifest (schema and consistency), that every listed file exists with its listed size,
//! the headers of the binary files against the manifest, the tensor names and shapes; then, if asked
//! (always, when serving), the sha256 of every file and the full contents (normalised rows, index
//! integrity, finite weights). Each check runs once per load, never per request. The first failure is
//! returned as a [`FormatError`] naming the file and what was expected vs found.
//!
//! The item files (vectors, id index, attributes) grow with the corpus (about 2.3 GB for 10^7 int8
//! items, 10 GB with all three dtypes), and hashing and scanning them dominates the load time of a
//! large snapshot. [`OpenOptions::defer_item_files`] restricts the load-time checksum and content
//! checks to the manifest and the weights; the item files then get only the structural checks (size,
//! header, shape) and the caller is expected to run [`verify_files`] afterwards (the server does, in
//! the background; docs/operations.md states the trade-off). [`OpenOptions::prefault`] faults the
//! files that serve requests into memory before the snapshot is returned.

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
    /// Skip the checksum and content checks of the item files (module doc); structural checks stay.
    pub defer_item_files: bool,
    /// Fault in the weights, index, attributes and the vectors of `serve_dtype` before returning.
    pub prefault: bool,
    /// The dtype that will be served (prefaulted); `None`: the manifest's first.
    pub serve_dtype: Option<Dtype>,
}

impl OpenOptions {
    /// Structural checks only, no huge-page advice: for tools that read a snapshot once (ids,
    /// summaries), not for serving.
    pub fn unverified() -> Self {
        OpenOptions {
            verify_checksums: false,
            verify_contents: false,
            huge_pages: false,
            ..OpenOptions::default()
        }
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_checksums: true,
            verify_contents: true,
            huge_pages: true,
            load_mode: LoadMode::Mmap,
            defer_item_files: false,
            prefault: false,
            serve_dtype: None,
        }
    }
}

/// One mapped file of a snapshot and where it lives in this process's address space (for the
/// huge-page report, which reads `/proc/self/smaps` over exactly these ranges).
#[derive(Debug, Clone)]
pub struct MappedFile {
    pub file: String,
    pub addr: usize,
    pub len: usize,
    /// Whether [`OpenOptions::prefault`] faulted it in.
    pub prefaulted: bool,
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
    /// Every mapped file with its address range, in load order.
    pub maps: Vec<MappedFile>,
}

impl SnapshotFiles {
    /// Opens and checks the version directory `dir` (see the module doc).
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<SnapshotFiles, FormatError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| not_found_or_io(e, MANIFEST_FILE, &manifest_path))?;
        let manifest = Manifest::from_json(&text)?;

        let maps = std::cell::RefCell::new(Vec::new());
        let serve = opts
            .serve_dtype
            .or_else(|| manifest.items.vectors.first().map(|v| v.dtype));
        // `item`: an item file (deferrable checks); `hot`: prefaulted when asked.
        let map = |file: &str, huge: bool, item: bool, hot: bool| -> Result<Mmap, FormatError> {
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
            let prefaulted = opts.prefault && hot;
            if prefaulted {
                crate::mmap::prefault(&m);
            }
            maps.borrow_mut().push(MappedFile {
                file: file.to_string(),
                addr: m.as_ptr() as usize,
                len: m.len(),
                prefaulted,
            });
            if opts.verify_checksums && !(item && opts.defer_item_files) {
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
            let hot = Some(vf.dtype) == serve;
            let v = ItemVectors::parse(map(&vf.file, opts.huge_pages, true, hot)?, &vf.file)?;
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
            if opts.verify_contents && !opts.defer_item_files {
                v.verify_rows()?;
            }
            vectors.push(v);
        }

        let index = IdIndex::parse(
            map(&items.index_file, opts.huge_pages, true, true)?,
            &items.index_file,
        )?;
        if index.count() as u64 != items.count {
            return Err(FormatError::mismatch(
                &items.index_file,
                "count",
                items.count,
                index.count(),
            ));
        }
        if opts.verify_contents && !opts.defer_item_files {
            index.verify()?;
        }

        let attributes = ItemAttributes::parse(
            map(&items.attributes_file, false, true, true)?,
            &items.attributes_file,
        )?;
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

        let weights = Weights::parse(
            map(&manifest.weights_file, false, false, true)?,
            &manifest.weights_file,
        )?;
        weights.check_against(&manifest.expected_tensors(), &manifest.weights_file)?;

        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            manifest,
            weights,
            vectors,
            index,
            attributes,
            maps: maps.into_inner(),
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

/// Full verification of a version directory (every checksum, every row, the index), through a
/// separate read-only map that is dropped at the end: what a deferred load (module doc) leaves for later.
pub fn verify_files(dir: &Path) -> Result<(), FormatError> {
    SnapshotFiles::open(
        dir,
        &OpenOptions {
            huge_pages: false,
            ..OpenOptions::default()
        },
    )
    .map(drop)
}

/// A missing file is reported by name; any other I/O error with its path.
fn not_found_or_io(e: std::io::Error, file: &str, path: &Path) -> FormatError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FormatError::MissingFile { file: file.into() }
    } else {
        FormatError::io(path, e)
    }
}
