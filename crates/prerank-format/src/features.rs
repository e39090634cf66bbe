//! The feature spec of a snapshot and the mapping from raw request values to embedding rows.
//!
//! This mapping is part of the format, not of the model: the trainer, the service and any third-party
//! exporter must agree on it bit for bit, so it lives here, is fully specified in
//! `docs/snapshot-format.md` section 3, and has no tunables beyond what the manifest states.
//!
//! Invariant: row 0 of every embedding table is the "missing" row; `FeatureSpec::rows()` counts it.

use serde::{Deserialize, Serialize};

/// FNV-1a, 64-bit: the documented hash for `hashed` features.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// How a feature's raw value becomes a row of its embedding table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureKind {
    /// Categorical: `1 + fnv1a64(canonical bytes) % buckets`.
    Hashed { buckets: u64 },
    /// Numeric, discretised: `1 + #{b in boundaries : b <= x}`.
    Bucketized { boundaries: Vec<f64> },
}

/// One input feature: its name (the request key and the tensor name suffix), kind and embedding width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: FeatureKind,
    /// Embedding width of this feature.
    pub dim: usize,
}

/// A raw value as it arrives in a request (or a training log), before it is mapped to a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    Missing,
    Str(&'a str),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

/// Why a raw value could not be mapped (the caller adds which feature it was).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureValueError {
    #[error("expected a number, found a string")]
    NotANumber,
    #[error("expected a finite number")]
    NotFinite,
    #[error("a categorical value must be a string, an integer or a boolean, found the float {0}")]
    FractionalCategorical(f64),
}

impl FeatureSpec {
    /// A `hashed` (categorical) feature.
    pub fn hashed(name: &str, buckets: u64, dim: usize) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            kind: FeatureKind::Hashed { buckets },
            dim,
        }
    }

    /// A `bucketized` (discretised numeric) feature.
    pub fn bucketized(name: &str, boundaries: &[f64], dim: usize) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            kind: FeatureKind::Bucketized {
                boundaries: boundaries.to_vec(),
            },
            dim,
        }
    }

    /// Rows of the embedding table, including the missing row 0.
    pub fn rows(&self) -> usize {
        match &self.kind {
            FeatureKind::Hashed { buckets } => *buckets as usize + 1,
            FeatureKind::Bucketized { boundaries } => boundaries.len() + 2,
        }
    }

    /// The embedding row of `value`.
    pub fn row(&self, value: RawValue<'_>) -> Result<usize, FeatureValueError> {
        if matches!(value, RawValue::Missing) {
            return Ok(0);
        }
        match &self.kind {
            FeatureKind::Hashed { buckets } => {
                let h = hash_canonical(value)?;
                Ok(1 + (h % buckets) as usize)
            }
            FeatureKind::Bucketized { boundaries } => {
                let x = match value {
                    RawValue::Int(v) => v as f64,
                    RawValue::UInt(v) => v as f64,
                    RawValue::Float(v) => v,
                    RawValue::Str(_) | RawValue::Bool(_) => {
                        return Err(FeatureValueError::NotANumber)
                    }
                    RawValue::Missing => return Ok(0),
                };
                if !x.is_finite() {
                    return Err(FeatureValueError::NotFinite);
                }
                Ok(1 + boundaries.partition_point(|b| *b <= x))
            }
        }
    }

    /// Checks the spec itself (positive sizes, increasing finite boundaries).
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("feature with an empty name".into());
        }
        if self.dim == 0 {
            return Err(format!("feature {:?}: dim must be > 0", self.name));
        }
        match &self.kind {
            FeatureKind::Hashed { buckets } => {
                if *buckets == 0 || *buckets > (1 << 32) {
                    return Err(format!(
                        "feature {:?}: buckets must be in 1..=2^32, found {buckets}",
                        self.name
                    ));
                }
            }
            FeatureKind::Bucketized { boundaries } => {
                if boundaries.iter().any(|b| !b.is_finite()) {
                    return Err(format!("feature {:?}: non-finite boundary", self.name));
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "feature {:?}: boundaries must be strictly increasing",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Hash of the canonical byte form of a categorical value (see the module doc and the spec).
pub fn hash_canonical(value: RawValue<'_>) -> Result<u64, FeatureValueError> {
    let mut buf = [0u8; 24];
    match value {
        RawValue::Str(s) => Ok(fnv1a64(s.as_bytes())),
        RawValue::Int(v) => Ok(fnv1a64(format_i64(v, &mut buf))),
        RawValue::UInt(v) => Ok(fnv1a64(format_u64(v, &mut buf))),
        RawValue::Bool(b) => Ok(fnv1a64(if b { b"true" } else { b"false" })),
        RawValue::Float(f) => {
            if f.is_finite() && f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                Ok(fnv1a64(format_i64(f as i64, &mut buf)))
            } else {
                Err(FeatureValueError::FractionalCategorical(f))
            }
        }
        RawValue::Missing => Ok(0),
    }
}

fn format_u64(mut v: u64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

fn format_i64(v: i64, buf: &mut [u8; 24]) -> &[u8] {
    if v >= 0 {
        return format_u64(v as u64, buf);
    }
    let len = format_u64(v.unsigned_abs(), buf).len();
    let start = buf.len() - len - 1;
    buf[start] = b'-';
    &buf[start..]
}

/// The behaviour-sequence part of the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviorSpec {
    /// Sequences longer than this are truncated to their first `max_len` entries (most recent first).
    pub max_len: usize,
    /// Per-item features; `item_id` is hashed from the behaviour's id, the others may come from the
    /// snapshot's item attribute table.
    pub item: Vec<FeatureSpec>,
    /// Per-behaviour extras (action type, time since the action, dwell time, ...).
    pub extras: Vec<FeatureSpec>,
}

/// All input features of the user tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSet {
    pub user: Vec<FeatureSpec>,
    pub behavior: BehaviorSpec,
}

impl FeatureSet {
    /// Width of one behaviour token: the sum of item and extra feature dims (= `d_model`).
    pub fn token_dim(&self) -> usize {
        self.behavior
            .item
            .iter()
            .chain(&self.behavior.extras)
            .map(|f| f.dim)
            .sum()
    }

    /// Width of the concatenated user feature embeddings.
    pub fn user_dim(&self) -> usize {
        self.user.iter().map(|f| f.dim).sum()
    }

    /// Checks every feature and that names are unique within the user and behaviour groups.
    pub fn validate(&self) -> Result<(), String> {
        for f in self
            .user
            .iter()
            .chain(&self.behavior.item)
            .chain(&self.behavior.extras)
        {
            f.validate()?;
        }
        check_unique(self.user.iter().map(|f| f.name.as_str()), "features.user")?;
        check_unique(
            self.behavior
                .item
                .iter()
                .chain(&self.behavior.extras)
                .map(|f| f.name.as_str()),
            "features.behavior",
        )?;
        if self.behavior.max_len == 0 {
            return Err("features.behavior.max_len must be > 0".into());
        }
        if !self.behavior.item.iter().any(|f| f.name == "item_id") {
            return Err("features.behavior.item must contain an `item_id` feature".into());
        }
        Ok(())
    }
}

fn check_unique<'a>(names: impl Iterator<Item = &'a str>, group: &str) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("{group}: duplicate feature name {n:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(buckets: u64) -> FeatureSpec {
        FeatureSpec {
            name: "f".into(),
            kind: FeatureKind::Hashed { buckets },
            dim: 4,
        }
    }

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"42"), 0x07ee_7e07_b4b1_9223);
    }

    #[test]
    fn canonical_forms_agree() {
        let f = hashed(1000);
        let from_str = f.row(RawValue::Str("-17")).unwrap();
        assert_eq!(f.row(RawValue::Int(-17)).unwrap(), from_str);
        assert_eq!(f.row(RawValue::Float(-17.0)).unwrap(), from_str);
        let u = f.row(RawValue::UInt(u64::MAX)).unwrap();
        assert_eq!(u, f.row(RawValue::Str("18446744073709551615")).unwrap());
        assert_eq!(
            f.row(RawValue::Int(0)).unwrap(),
            f.row(RawValue::Str("0")).unwrap()
        );
        assert_eq!(
            f.row(RawValue::Bool(true)).unwrap(),
            f.row(RawValue::Str("true")).unwrap()
        );
        assert!(f.row(RawValue::Float(1.5)).is_err());
        assert_eq!(f.row(RawValue::Missing).unwrap(), 0);
        assert!((1..=1000).contains(&from_str));
    }

    #[test]
    fn bucketized_rows() {
        let f = FeatureSpec {
            name: "age".into(),
            kind: FeatureKind::Bucketized {
                boundaries: vec![18.0, 25.0, 30.0],
            },
            dim: 2,
        };
        assert_eq!(f.rows(), 5);
        assert_eq!(f.row(RawValue::Missing).unwrap(), 0);
        assert_eq!(f.row(RawValue::Int(3)).unwrap(), 1);
        assert_eq!(f.row(RawValue::Int(18)).unwrap(), 2);
        assert_eq!(f.row(RawValue::Float(24.9)).unwrap(), 2);
        assert_eq!(f.row(RawValue::UInt(99)).unwrap(), 4);
        assert_eq!(
            f.row(RawValue::Str("x")),
            Err(FeatureValueError::NotANumber)
        );
        assert_eq!(
            f.row(RawValue::Float(f64::NAN)),
            Err(FeatureValueError::NotFinite)
        );
    }

    #[test]
    fn spec_serde_shape() {
        let json = r#"{"name":"age","kind":"bucketized","boundaries":[1,2],"dim":3}"#;
        let f: FeatureSpec = serde_json::from_str(json).unwrap();
        assert_eq!(f.rows(), 4);
        let back = serde_json::to_value(&f).unwrap();
        assert_eq!(back["kind"], "bucketized");
        let bad = FeatureSpec {
            kind: FeatureKind::Bucketized {
                boundaries: vec![2.0, 1.0],
            },
            ..f
        };
        assert!(bad.validate().is_err());
    }
}
