//! Writing a version directory atomically.
//!
//! [`write_snapshot`] validates the parts (normalised vectors, tensor names and shapes, a consistent
//! manifest), writes every file into a temporary directory next to the destination (its name starts
//! with `.`, so model repositories ignore it), fsyncs each file and the directory, renames the directory
//! to its final name and fsyncs the parent. A crash at any point leaves either no version or a complete
//! one, never a half-written one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::features::FeatureSet;
use crate::manifest::{
    Architecture, FileEntry, GoldenCheck, ItemsSpec, Manifest, VectorFile, MANIFEST_FILE,
};
use crate::vectors::Dtype;
use crate::{attrs, index, vectors, FormatError, FORMAT_VERSION};

/// An f32 tensor to store in `user_tower.safetensors` (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Everything a producer supplies; the writer derives file names, sizes and checksums.
#[derive(Debug, Clone)]
pub struct SnapshotParts {
    pub model: String,
    pub version: u64,
    /// RFC 3339; `None` uses the current time.
    pub created_at: Option<String>,
    pub tau: f32,
    pub features: FeatureSet,
    pub architecture: Architecture,
    /// Free-form JSON object; must contain `"producer": "<name version>"`.
    pub provenance: serde_json::Value,
    pub golden: Vec<GoldenCheck>,
    /// Tensor name -> tensor, exactly the names of `Manifest::expected_tensors`.
    pub tensors: BTreeMap<String, Tensor>,
    /// Item id of each row (unique).
    pub item_ids: Vec<u64>,
    /// `count * dim` f32, row-major, each row L2-normalised.
    pub item_vectors: Vec<f32>,
    /// Attribute column names (e.g. `["category", "shop", "brand"]`).
    pub attribute_names: Vec<String>,
    /// `count * attribute_names.len()` raw values, row-major.
    pub item_attributes: Vec<u64>,
    /// Which dtypes to store; the first is the default. Must be non-empty.
    pub dtypes: Vec<Dtype>,
}

/// File names the writer uses (any names are valid for readers; the manifest lists them).
pub const WEIGHTS_FILE: &str = "user_tower.safetensors";
pub const INDEX_FILE: &str = "items.idx";
pub const ATTRIBUTES_FILE: &str = "items.attr";

/// Vector file name for a dtype: `items.<dtype>.vec`.
pub fn vectors_file(dtype: Dtype) -> String {
    format!("items.{}.vec", dtype.name())
}

/// Writes `parts` as the version directory `dest` (e.g. `models/my-model/7`), atomically. `dest` must
/// not exist. Returns the manifest written.
pub fn write_snapshot(dest: &Path, parts: &SnapshotParts) -> Result<Manifest, FormatError> {
    let files = encode_files(parts)?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    if dest.exists() {
        return Err(FormatError::AlreadyExists {
            path: dest.to_path_buf(),
        });
    }
    fs::create_dir_all(parent).map_err(|e| FormatError::io(parent, e))?;
    let tmp = temp_dir_for(dest);
    fs::create_dir(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
    let result = (|| {
        let mut entries = BTreeMap::new();
        for (name, bytes) in &files.data {
            write_synced(&tmp.join(name), bytes)?;
            entries.insert(
                name.clone(),
                FileEntry {
                    bytes: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(bytes)),
                },
            );
        }
        let mut manifest = files.manifest.clone();
        manifest.files = entries;
        manifest.validate()?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| FormatError::invalid(MANIFEST_FILE, e.to_string()))?;
        write_synced(&tmp.join(MANIFEST_FILE), &json)?;
        sync_dir(&tmp)?;
        fs::rename(&tmp, dest).map_err(|e| FormatError::io(dest, e))?;
        sync_dir(parent)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

struct EncodedFiles {
    manifest: Manifest,
    data: Vec<(String, Vec<u8>)>,
}

fn encode_files(p: &SnapshotParts) -> Result<EncodedFiles, FormatError> {
    let dim = p.architecture.tower_widths.last().copied().unwrap_or(0);
    let count = p.item_ids.len();
    if dim == 0 || p.item_vectors.len() != count * dim {
        return Err(FormatError::mismatch(
            "item vectors",
            "length",
            format!("{count} ids * dim {dim}"),
            p.item_vectors.len(),
        ));
    }
    if p.item_attributes.len() != count * p.attribute_names.len() {
        return Err(FormatError::mismatch(
            ATTRIBUTES_FILE,
            "length",
            format!("{count} * {}", p.attribute_names.len()),
            p.item_attributes.len(),
        ));
    }
    if p.dtypes.is_empty() {
        return Err(FormatError::invalid("item vectors", "no dtype requested"));
    }
    for (row, v) in p.item_vectors.chunks_exact(dim).enumerate() {
        let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32;
        if !norm.is_finite() || (norm - 1.0).abs() > 1e-4 {
            return Err(FormatError::NotNormalised {
                file: "item vectors".into(),
                row: row as u64,
                norm,
                tolerance: 1e-4,
            });
        }
    }
    let created_at = p.created_at.clone().unwrap_or_else(now_rfc3339);
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: p.model.clone(),
        version: p.version,
        created_at,
        tau: p.tau,
        features: p.features.clone(),
        architecture: p.architecture.clone(),
        items: ItemsSpec {
            count: count as u64,
            dim,
            vectors: p
                .dtypes
                .iter()
                .map(|d| VectorFile {
                    dtype: *d,
                    file: vectors_file(*d),
                })
                .collect(),
            index_file: INDEX_FILE.into(),
            attributes_file: ATTRIBUTES_FILE.into(),
            attributes: p.attribute_names.clone(),
        },
        weights_file: WEIGHTS_FILE.into(),
        files: BTreeMap::new(),
        provenance: p.provenance.clone(),
        golden: p.golden.clone(),
    };
    // Tensor checks need the manifest's view of the architecture.
    let expected = manifest.expected_tensors();
    for (name, shape) in &expected {
        match p.tensors.get(name) {
            None => {
                return Err(FormatError::mismatch(
                    WEIGHTS_FILE,
                    &format!("tensor {name}"),
                    "present",
                    "missing",
                ))
            }
            Some(t) if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() => {
                return Err(FormatError::mismatch(
                    WEIGHTS_FILE,
                    &format!("shape of tensor {name}"),
                    format!("{shape:?}"),
                    format!("{:?} with {} values", t.shape, t.data.len()),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = p
        .tensors
        .keys()
        .find(|k| !expected.iter().any(|(n, _)| n == *k))
    {
        return Err(FormatError::invalid(
            WEIGHTS_FILE,
            format!("unexpected tensor {extra}"),
        ));
    }

    let mut data = Vec::new();
    data.push((WEIGHTS_FILE.to_string(), encode_safetensors(&p.tensors)?));
    for d in &p.dtypes {
        data.push((vectors_file(*d), vectors::encode(*d, dim, &p.item_vectors)));
    }
    data.push((
        INDEX_FILE.into(),
        index::encode(&p.item_ids).map_err(|e| FormatError::invalid(INDEX_FILE, e))?,
    ));
    data.push((
        ATTRIBUTES_FILE.into(),
        attrs::encode_with_count(p.attribute_names.len(), count, &p.item_attributes),
    ));
    // Placeholder entries so validate() sees every file; real sizes/checksums are filled after writing.
    for (name, bytes) in &data {
        manifest.files.insert(
            name.clone(),
            FileEntry {
                bytes: bytes.len() as u64,
                sha256: "0".repeat(64),
            },
        );
    }
    manifest.validate()?;
    Ok(EncodedFiles { manifest, data })
}

/// Serialises f32 tensors with the `safetensors` crate (which pads the header to 8 bytes).
pub fn encode_safetensors(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>, FormatError> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .map(|v| (name.clone(), v))
            .map_err(|e| FormatError::invalid(WEIGHTS_FILE, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| FormatError::invalid(WEIGHTS_FILE, e.to_string()))
}

fn temp_dir_for(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dest.with_file_name(format!(".tmp-{name}-{}-{nanos}", std::process::id()))
}

/// Writes `bytes` to `path` and fsyncs the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let mut f = File::create(path).map_err(|e| FormatError::io(path, e))?;
    f.write_all(bytes).map_err(|e| FormatError::io(path, e))?;
    f.sync_all().map_err(|e| FormatError::io(path, e))
}

/// fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<(), FormatError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io(dir, e))
}

/// The current UTC time as RFC 3339 (`2026-11-22T16:00:00Z`), without a date-time dependency.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Formats Unix seconds as RFC 3339 UTC (days-to-civil algorithm of H. Hinnant).
pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_795_305_600), "2026-11-22T00:00:00Z");
        assert_eq!(
            rfc3339_from_unix(951_782_400 + 3661),
            "2000-02-29T01:01:01Z"
        );
    }
}
