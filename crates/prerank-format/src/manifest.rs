//! `manifest.json`: what a snapshot is (model, version, features, architecture, items, files,
//! provenance) and how to check it (checksums, golden checks).
//!
//! Invariants after [`Manifest::validate`]: the format version is supported, the feature spec is valid,
//! `d_model` equals the behaviour token width and is divisible by `heads`, the last tower width equals
//! `items.dim`, every referenced file is listed in `files` with a sha256, and `tau` is finite.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::features::FeatureSet;
use crate::vectors::Dtype;
use crate::{FormatError, FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT_VERSION};

/// The manifest file name inside a version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model: String,
    pub version: u64,
    /// RFC 3339 creation time (informational).
    pub created_at: String,
    /// Score scale: `score = tau * <u, v>`.
    pub tau: f32,
    pub features: FeatureSet,
    pub architecture: Architecture,
    pub items: ItemsSpec,
    pub weights_file: String,
    /// Every data file of the version directory with its size and sha256.
    pub files: BTreeMap<String, FileEntry>,
    /// Free-form; `producer` is required.
    pub provenance: serde_json::Value,
    #[serde(default)]
    pub golden: Vec<GoldenCheck>,
}

/// Hyper-parameters of the student user tower (docs/snapshot-format.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// `pfd-user-tower-v1`, the only kind this version knows.
    pub kind: String,
    pub d_model: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    /// `relu` (the only value in v1).
    pub ffn_activation: String,
    pub layer_norm_eps: f32,
    pub tower_widths: Vec<usize>,
    pub leaky_relu_slope: f32,
}

/// The architecture kind of format v1.
pub const ARCH_KIND: &str = "pfd-user-tower-v1";

/// The item side: how many items, their vectors, index and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemsSpec {
    pub count: u64,
    pub dim: usize,
    /// One file per stored dtype; the first is the default.
    pub vectors: Vec<VectorFile>,
    pub index_file: String,
    pub attributes_file: String,
    /// Column names of the attribute file, in order.
    pub attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorFile {
    pub dtype: Dtype,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub sha256: String,
}

/// A sample request with the outputs the producer computed for it; the service reproduces them
/// before it serves the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenCheck {
    pub name: String,
    /// A `POST /v1/rank` request body (`user`, `candidates`, `k`).
    pub request: serde_json::Value,
    /// The expected L2-normalised user vector.
    pub user_vector: Vec<f32>,
    /// The expected top items in order, scored against the f32 vectors.
    pub top: Vec<GoldenItem>,
    /// Max abs difference allowed per user-vector component and per score.
    pub tolerance: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenItem {
    pub item_id: u64,
    pub score: f32,
}

impl Manifest {
    /// Parses and validates manifest JSON.
    pub fn from_json(text: &str) -> Result<Manifest, FormatError> {
        // Check the version before the full schema, so an old reader gives the useful error.
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| manifest_err(e.to_string()))?;
        if let Some(v) = raw.get("format_version").and_then(|v| v.as_u64()) {
            if v < u64::from(OLDEST_SUPPORTED_FORMAT_VERSION) || v > u64::from(FORMAT_VERSION) {
                return Err(FormatError::UnsupportedVersion {
                    file: MANIFEST_FILE.into(),
                    found: v.min(u64::from(u32::MAX)) as u32,
                    oldest: OLDEST_SUPPORTED_FORMAT_VERSION,
                    newest: FORMAT_VERSION,
                });
            }
        }
        let m: Manifest = serde_json::from_value(raw).map_err(|e| manifest_err(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks internal consistency (see the module doc).
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.format_version < OLDEST_SUPPORTED_FORMAT_VERSION
            || self.format_version > FORMAT_VERSION
        {
            return Err(FormatError::UnsupportedVersion {
                file: MANIFEST_FILE.into(),
                found: self.format_version,
                oldest: OLDEST_SUPPORTED_FORMAT_VERSION,
                newest: FORMAT_VERSION,
            });
        }
        if !valid_model_name(&self.model) {
            return Err(manifest_err(format!(
                "model: {:?} is not a valid name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})",
                self.model
            )));
        }
        if self.version == 0 {
            return Err(manifest_err("version: must be a positive integer"));
        }
        if !self.tau.is_finite() || self.tau <= 0.0 {
            return Err(manifest_err(format!(
                "tau: expected a positive finite number, found {}",
                self.tau
            )));
        }
        self.features.validate().map_err(manifest_err)?;
        let a = &self.architecture;
        if a.kind != ARCH_KIND {
            return Err(mismatch("architecture.kind", ARCH_KIND, &a.kind));
        }
        if a.d_model != self.features.token_dim() {
            return Err(mismatch(
                "architecture.d_model",
                format!(
                    "{} (sum of behaviour feature dims)",
                    self.features.token_dim()
                ),
                a.d_model,
            ));
        }
        if a.heads == 0 || !a.d_model.is_multiple_of(a.heads) {
            return Err(mismatch(
                "architecture.heads",
                format!("a divisor of d_model {}", a.d_model),
                a.heads,
            ));
        }
        if a.ffn_dim == 0 {
            return Err(mismatch("architecture.ffn_dim", "> 0", 0));
        }
        if a.ffn_activation != "relu" {
            return Err(mismatch(
                "architecture.ffn_activation",
                "relu",
                &a.ffn_activation,
            ));
        }
        if !(a.layer_norm_eps.is_finite() && a.layer_norm_eps > 0.0) {
            return Err(mismatch(
                "architecture.layer_norm_eps",
                "> 0",
                a.layer_norm_eps,
            ));
        }
        if !a.leaky_relu_slope.is_finite() {
            return Err(mismatch(
                "architecture.leaky_relu_slope",
                "a finite number",
                a.leaky_relu_slope,
            ));
        }
        if a.tower_widths.len() != 3 || a.tower_widths.contains(&0) {
            return Err(mismatch(
                "architecture.tower_widths",
                "three positive widths",
                format!("{:?}", a.tower_widths),
            ));
        }
        if a.tower_widths[2] != self.items.dim {
            return Err(mismatch(
                "items.dim",
                format!("{} (last tower width)", a.tower_widths[2]),
                self.items.dim,
            ));
        }
        if self.items.vectors.is_empty() {
            return Err(mismatch(
                "items.vectors",
                "at least one vector file",
                "none",
            ));
        }
        let mut dtypes = std::collections::BTreeSet::new();
        for v in &self.items.vectors {
            if !dtypes.insert(v.dtype.name()) {
                return Err(manifest_err(format!(
                    "items.vectors: dtype {} listed twice",
                    v.dtype
                )));
            }
        }
        for attr in &self.items.attributes {
            if attr == "item_id" {
                return Err(manifest_err(
                    "items.attributes: `item_id` is the key, not an attribute",
                ));
            }
        }
        for file in self.data_files() {
            if !valid_file_name(file) {
                return Err(manifest_err(format!(
                    "file name {file:?} must be a plain name inside the version directory"
                )));
            }
            let entry = self
                .files
                .get(file)
                .ok_or_else(|| manifest_err(format!("files: no entry for {file}")))?;
            if entry.sha256.len() != 64
                || !entry
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(manifest_err(format!(
                    "files.{file}.sha256: expected 64 lowercase hex digits"
                )));
            }
        }
        if self.files.len() != self.data_files().len() {
            return Err(manifest_err(
                "files: lists a file that no other field refers to",
            ));
        }
        if self
            .provenance
            .get("producer")
            .and_then(|p| p.as_str())
            .is_none()
        {
            return Err(manifest_err("provenance.producer: required string"));
        }
        for g in &self.golden {
            if g.user_vector.len() != self.items.dim {
                return Err(manifest_err(format!(
                    "golden {:?}: user_vector has {} values, expected {}",
                    g.name,
                    g.user_vector.len(),
                    self.items.dim
                )));
            }
            if !(g.tolerance.is_finite() && g.tolerance > 0.0) {
                return Err(manifest_err(format!(
                    "golden {:?}: tolerance must be > 0",
                    g.name
                )));
            }
        }
        Ok(())
    }

    /// Every data file the manifest refers to (weights, vectors, index, attributes).
    pub fn data_files(&self) -> Vec<&str> {
        let mut v = vec![self.weights_file.as_str()];
        v.extend(self.items.vectors.iter().map(|f| f.file.as_str()));
        v.push(&self.items.index_file);
        v.push(&self.items.attributes_file);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Names and shapes of every tensor `user_tower.safetensors` must hold (section 5 of the spec).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let a = &self.architecture;
        let d = a.d_model;
        let mut t = Vec::new();
        for f in &self.features.user {
            t.push((format!("emb.user.{}", f.name), vec![f.rows(), f.dim]));
        }
        for f in self
            .features
            .behavior
            .item
            .iter()
            .chain(&self.features.behavior.extras)
        {
            t.push((format!("emb.behavior.{}", f.name), vec![f.rows(), f.dim]));
        }
        for p in ["q", "k", "v", "out"] {
            t.push((format!("attn.{p}.weight"), vec![d, d]));
            t.push((format!("attn.{p}.bias"), vec![d]));
        }
        for ln in ["ln1", "ln2"] {
            t.push((format!("attn.{ln}.weight"), vec![d]));
            t.push((format!("attn.{ln}.bias"), vec![d]));
        }
        t.push(("attn.ffn1.weight".into(), vec![a.ffn_dim, d]));
        t.push(("attn.ffn1.bias".into(), vec![a.ffn_dim]));
        t.push(("attn.ffn2.weight".into(), vec![d, a.ffn_dim]));
        t.push(("attn.ffn2.bias".into(), vec![d]));
        let mut input = self.features.user_dim() + d;
        for (i, w) in a.tower_widths.iter().enumerate() {
            t.push((format!("tower.{i}.weight"), vec![*w, input]));
            t.push((format!("tower.{i}.bias"), vec![*w]));
            input = *w;
        }
        t
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: safe as a directory name and a metric label.
pub fn valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn valid_file_name(name: &str) -> bool {
    valid_model_name(name) && name != MANIFEST_FILE
}

fn manifest_err(reason: impl Into<String>) -> FormatError {
    FormatError::Manifest {
        file: MANIFEST_FILE.into(),
        reason: reason.into(),
    }
}

fn mismatch(field: &str, expected: impl ToString, found: impl ToString) -> FormatError {
    FormatError::mismatch(MANIFEST_FILE, field, expected, found)
}
