//! A/B buckets: which model (and version) serves a request.
//!
//! A bucket config (TOML, `--buckets`, format in docs/operations.md) lists buckets with a name, a model,
//! an optional pinned version and a traffic share (shares sum to 1). A user is assigned by a salted hash
//! of the user id, so the same user lands in the same bucket on every replica and after restarts as long
//! as the salt and the bucket list (order and shares) are unchanged:
//!
//! ```text
//! key   = the user id as bytes: a JSON string's UTF-8 bytes; an integer's decimal digits
//!         ("42" and 42 are the same user); any other JSON value its compact JSON text;
//!         missing or null: empty (all anonymous users share one bucket)
//! h     = splitmix64_finalizer(fnv1a64(salt_bytes ++ [0x00] ++ key))
//! point = (h >> 11) / 2^53                      in [0, 1)
//! bucket = the first bucket i with point < share_0 + ... + share_i   (the last one if rounding leaves none)
//! ```
//!
//! `fnv1a64` and the SplitMix64 finaliser are the ones of the snapshot format (`prerank_format`), pinned
//! by tests with fixed values, so assignment never changes silently across releases.
//!
//! Overrides (QA): `"bucket"` in the request body or the `x-prerank-bucket` header picks a configured
//! bucket. A container can be pinned to one bucket (`--bucket` / `PRERANK_BUCKET`): every request is
//! served by that bucket and readiness only needs its model. A request that names a `model` without a
//! bucket override leaves the plan: it is served by that model's serving version and labelled `none`.
//! Without a config every request is labelled `default` (metrics carry no bucket label then).
//!
//! Pure and sync: no I/O beyond reading the config file once at start-up.

use std::path::Path;

use prerank_format::features::fnv1a64;
use prerank_format::index::mix64;
use prerank_format::manifest::valid_model_name;
use serde::{Deserialize, Serialize};

use crate::request::Value;

/// Bucket label without a bucket config.
pub const DEFAULT_BUCKET: &str = "default";
/// Bucket label of a request that named a model outside the bucket plan.
pub const NO_BUCKET: &str = "none";
/// Header that overrides the assigned bucket.
pub const BUCKET_HEADER: &str = "x-prerank-bucket";

/// A bucket config that cannot be used (start-up errors).
#[derive(Debug, thiserror::Error)]
pub enum BucketConfigError {
    #[error("cannot read the bucket config {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bucket config: {0}")]
    Parse(String),
    #[error("bucket config: {0}")]
    Invalid(String),
}

/// A request's bucket choice that cannot be honoured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketError {
    /// The requested name (at most 64 characters of it) and the buckets this container serves.
    #[error("bucket: {0:?} is not a configured bucket (configured: {1})")]
    Unknown(String, String),
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketFile {
    /// Salt of the assignment hash; change it to reshuffle users (a new experiment).
    #[serde(default)]
    salt: String,
    #[serde(rename = "bucket", default)]
    buckets: Vec<BucketSpec>,
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// Label in responses and metrics: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    pub name: String,
    /// The model directory under the model root.
    pub model: String,
    /// Serve exactly this version (kept loaded next to the model's policy version); default: the
    /// model's serving version.
    #[serde(default)]
    pub version: Option<u64>,
    /// Fraction of users, in (0, 1]; all shares sum to 1.
    pub share: f64,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Bucket label for the response and metrics.
    pub bucket: String,
    /// Model to use (`None`: the registry's default resolution).
    pub model: Option<String>,
    /// Pinned version (`None`: the model's serving version).
    pub version: Option<u64>,
    /// Whether the bucket label goes on metrics (a config or a container pin is present).
    pub labelled: bool,
    /// Model and version come from a configured bucket (an unavailable model is then a server-side
    /// 503, not a client's 404).
    pub from_plan: bool,
}

/// The bucket plan of this process.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    salt: String,
    buckets: Vec<BucketSpec>,
    /// Cumulative shares, the last one forced to 1.
    cumulative: Vec<f64>,
    /// `PRERANK_BUCKET`: this container serves only this bucket.
    pinned: Option<String>,
}

/// The assignment key of a user id (see the module doc).
pub fn user_key(id: Option<&serde_json::Value>) -> Vec<u8> {
    match id {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.to_string().into_bytes(),
            (None, Some(i)) => i.to_string().into_bytes(),
            (None, None) => n.to_string().into_bytes(),
        },
        Some(other) => other.to_string().into_bytes(),
    }
}

/// [`user_key`] of a domain user id: the same bytes as the JSON value it was decoded from.
pub fn user_key_of(id: Option<&Value>) -> Vec<u8> {
    match id {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Str(s)) => s.as_bytes().to_vec(),
        Some(Value::Int(i)) => i.to_string().into_bytes(),
        Some(Value::UInt(u)) => u.to_string().into_bytes(),
        // serde_json's own formatting of a finite double, as `user_key` gets it.
        Some(Value::Float(f)) => serde_json::Number::from_f64(*f)
            .map(|n| n.to_string())
            .unwrap_or_default()
            .into_bytes(),
        Some(Value::Bool(b)) => b.to_string().into_bytes(),
        Some(Value::Composite(text)) => text.clone().into_bytes(),
    }
}

/// The point in [0, 1) of a user key under a salt (see the module doc).
pub fn assignment_point(salt: &str, key: &[u8]) -> f64 {
    let mut bytes = Vec::with_capacity(salt.len() + 1 + key.len());
    bytes.extend_from_slice(salt.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key);
    let h = mix64(fnv1a64(&bytes));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Buckets {
    /// No bucket config: every request is `default`.
    pub fn none() -> Buckets {
        Buckets::default()
    }

    /// Parses and validates a bucket config.
    pub fn from_toml(text: &str) -> Result<Buckets, BucketConfigError> {
        let file: BucketFile =
            toml::from_str(text).map_err(|e| BucketConfigError::Parse(e.to_string()))?;
        Buckets::new(file.salt, file.buckets)
    }

    /// Reads a bucket config file.
    pub fn load(path: &Path) -> Result<Buckets, BucketConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| BucketConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Buckets::from_toml(&text)
    }

    /// Validates a bucket list: names and models valid, names unique, shares in (0, 1] summing to 1.
    pub fn new(salt: String, buckets: Vec<BucketSpec>) -> Result<Buckets, BucketConfigError> {
        let invalid = |m: String| Err(BucketConfigError::Invalid(m));
        if buckets.is_empty() {
            return invalid("no [[bucket]] entries".into());
        }
        let mut cumulative = Vec::with_capacity(buckets.len());
        let mut sum = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            if !valid_model_name(&b.name) {
                return invalid(format!(
                    "bucket {i}: invalid name {:?} (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,63}})",
                    b.name
                ));
            }
            if b.name == NO_BUCKET {
                return invalid(format!("bucket {i}: the name {NO_BUCKET:?} is reserved"));
            }
            if buckets[..i].iter().any(|o| o.name == b.name) {
                return invalid(format!("bucket {:?} is listed twice", b.name));
            }
            if !valid_model_name(&b.model) {
                return invalid(format!(
                    "bucket {:?}: invalid model name {:?}",
                    b.name, b.model
                ));
            }
            if b.version == Some(0) {
                return invalid(format!("bucket {:?}: version must be >= 1", b.name));
            }
            if !(b.share.is_finite() && b.share > 0.0 && b.share <= 1.0) {
                return invalid(format!(
                    "bucket {:?}: share must be in (0, 1], found {}",
                    b.name, b.share
                ));
            }
            sum += b.share;
            cumulative.push(sum);
        }
        if (sum - 1.0).abs() > 1e-6 {
            return invalid(format!("shares must sum to 1, found {sum}"));
        }
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Buckets {
            salt,
            buckets,
            cumulative,
            pinned: None,
        })
    }

    /// Pins this container to one bucket (`PRERANK_BUCKET`). Without a config the name is only a
    /// label; with one it must be a configured bucket.
    pub fn pin(mut self, name: &str) -> Result<Buckets, BucketConfigError> {
        if !valid_model_name(name) {
            return Err(BucketConfigError::Invalid(format!(
                "PRERANK_BUCKET: invalid bucket name {name:?}"
            )));
        }
        if !self.buckets.is_empty() && self.by_name(name).is_none() {
            return Err(BucketConfigError::Invalid(format!(
                "PRERANK_BUCKET: {name:?} is not a configured bucket (configured: {})",
                self.names()
            )));
        }
        self.pinned = Some(name.to_string());
        Ok(self)
    }

    pub fn buckets(&self) -> &[BucketSpec] {
        &self.buckets
    }

    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// Whether a config or a container pin is present (then metrics carry the bucket label).
    pub fn configured(&self) -> bool {
        !self.buckets.is_empty() || self.pinned.is_some()
    }

    pub fn by_name(&self, name: &str) -> Option<&BucketSpec> {
        self.buckets.iter().find(|b| b.name == name)
    }

    fn names(&self) -> String {
        self.buckets
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The bucket of a user by the salted hash (ignores the container pin). `None` without a config.
    pub fn assign(&self, user: Option<&serde_json::Value>) -> Option<&BucketSpec> {
        self.assign_key(&user_key(user))
    }

    /// [`Buckets::assign`] on an already-computed key.
    pub fn assign_key(&self, key: &[u8]) -> Option<&BucketSpec> {
        if self.buckets.is_empty() {
            return None;
        }
        let p = assignment_point(&self.salt, key);
        let i = self
            .cumulative
            .iter()
            .position(|c| p < *c)
            .unwrap_or(self.buckets.len() - 1);
        self.buckets.get(i)
    }

    /// The (model, pinned version) each bucket served by this container needs live (readiness).
    pub fn targets(&self) -> Vec<(String, Option<u64>)> {
        self.served()
            .map(|b| (b.model.clone(), b.version))
            .collect()
    }

    /// The buckets this container serves: the pinned one, or all.
    fn served(&self) -> impl Iterator<Item = &BucketSpec> {
        let pinned = self.pinned.clone();
        self.buckets
            .iter()
            .filter(move |b| pinned.as_ref().is_none_or(|p| *p == b.name))
    }

    fn route_to(&self, b: &BucketSpec) -> Route {
        Route {
            bucket: b.name.clone(),
            model: Some(b.model.clone()),
            version: b.version,
            labelled: true,
            from_plan: true,
        }
    }

    /// Where a request goes, given its override (body `bucket`, else the header), its `model` field
    /// and its user id.
    pub fn route(
        &self,
        override_bucket: Option<&str>,
        model: Option<&str>,
        user: Option<&serde_json::Value>,
    ) -> Result<Route, BucketError> {
        self.route_key(override_bucket, model, || user_key(user))
    }

    /// [`Buckets::route`] with the user's assignment key computed by `key` (called only when the
    /// request is assigned by hash).
    pub fn route_key(
        &self,
        override_bucket: Option<&str>,
        model: Option<&str>,
        key: impl FnOnce() -> Vec<u8>,
    ) -> Result<Route, BucketError> {
        let labelled = self.configured();
        if let Some(name) = override_bucket {
            let shown = || name.chars().take(64).collect::<String>();
            if self.buckets.is_empty() {
                let own = self.pinned.as_deref().unwrap_or(DEFAULT_BUCKET);
                if name != own {
                    return Err(BucketError::Unknown(shown(), own.to_string()));
                }
            } else {
                let served: Vec<&BucketSpec> = self.served().collect();
                let Some(b) = served.iter().find(|b| b.name == name) else {
                    let names: Vec<&str> = served.iter().map(|b| b.name.as_str()).collect();
                    return Err(BucketError::Unknown(shown(), names.join(", ")));
                };
                return Ok(self.route_to(b));
            }
        }
        if let Some(m) = model {
            if !self.buckets.is_empty() {
                return Ok(Route {
                    bucket: NO_BUCKET.into(),
                    model: Some(m.to_string()),
                    version: None,
                    labelled,
                    from_plan: false,
                });
            }
        }
        if self.buckets.is_empty() {
            return Ok(Route {
                bucket: self.pinned.clone().unwrap_or_else(|| DEFAULT_BUCKET.into()),
                model: model.map(str::to_string),
                version: None,
                labelled,
                from_plan: false,
            });
        }
        if let Some(b) = self.pinned.as_deref().and_then(|p| self.by_name(p)) {
            return Ok(self.route_to(b));
        }
        match self.assign_key(&key()) {
            Some(b) => Ok(self.route_to(b)),
            None => Ok(Route {
                bucket: DEFAULT_BUCKET.into(),
                model: None,
                version: None,
                labelled,
                from_plan: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
salt = "exp-1"
[[bucket]]
name = "control"
model = "baseline"
share = 0.5
[[bucket]]
name = "pfd"
model = "pfd-student"
version = 3
share = 0.5
"#;

    #[test]
    fn parses_and_validates() {
        let b = Buckets::from_toml(TWO).unwrap();
        assert_eq!(b.buckets().len(), 2);
        assert_eq!(b.buckets()[1].version, Some(3));
        for bad in [
            "[[bucket]]\nname = \"a\"\nmodel = \"m\"\nshare = 0.5\n",
            "[[bucket]]\nname = \"../x\"\nmodel = \"m\"\nshare = 1.0\n",
            "[[bucket]]\nname = \"a\"\nmodel = \"../m\"\nshare = 1.0\n",
            "[[bucket]]\nname = \"a\"\nmodel = \"m\"\nshare = 1.0\nextra = 1\n",
            "[[bucket]]\nname = \"a\"\nmodel = \"m\"\nshare = 0.5\n[[bucket]]\nname = \"a\"\nmodel = \"m\"\nshare = 0.5\n",
            "salt = \"x\"\n",
        ] {
            assert!(Buckets::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_points_are_pinned() {
        assert_eq!(user_key(Some(&serde_json::json!(42))), b"42");
        assert_eq!(user_key(Some(&serde_json::json!("42"))), b"42");
        assert_eq!(user_key(None), b"");
        // Fixed value (also computed by an independent Python implementation of the documented
        // formula): changing the hash would silently move users between buckets.
        let p = assignment_point("exp-2026-11", b"42");
        assert_eq!(format!("{p:.12}"), "0.622284958781");
    }

    #[test]
    fn routes_without_config_with_pin_and_with_model() {
        let none = Buckets::none();
        let r = none.route(None, None, None).unwrap();
        assert_eq!(
            (r.bucket.as_str(), r.labelled, r.model),
            ("default", false, None)
        );
        assert!(none.route(Some("x"), None, None).is_err());
        assert!(none.route(Some("default"), None, None).is_ok());

        let label = Buckets::none().pin("blue").unwrap();
        let r = label.route(None, Some("m"), None).unwrap();
        assert_eq!(
            (r.bucket.as_str(), r.labelled, r.model.as_deref()),
            ("blue", true, Some("m"))
        );

        let b = Buckets::from_toml(TWO).unwrap();
        let r = b
            .route(None, Some("other"), Some(&serde_json::json!(1)))
            .unwrap();
        assert_eq!((r.bucket.as_str(), r.from_plan), ("none", false));
        let r = b.route(Some("pfd"), Some("other"), None).unwrap();
        assert_eq!(
            (r.model.as_deref(), r.version),
            (Some("pfd-student"), Some(3))
        );
        let long = "x".repeat(10_000);
        let err = b.route(Some(&long), None, None).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        let pinned = Buckets::from_toml(TWO).unwrap().pin("control").unwrap();
        for u in 0..50 {
            let r = pinned
                .route(None, None, Some(&serde_json::json!(u)))
                .unwrap();
            assert_eq!(r.bucket, "control");
        }
        assert!(pinned.route(Some("pfd"), None, None).is_err());
        assert_eq!(pinned.targets(), vec![("baseline".to_string(), None)]);
    }

    /// A domain user id gives the assignment key of the JSON value it came from, for every kind of
    /// value (so decoding a request before routing it moves no user to another bucket).
    #[test]
    fn domain_keys_equal_json_keys() {
        let values = [
            serde_json::json!(null),
            serde_json::json!(42),
            serde_json::json!(-3),
            serde_json::json!(u64::MAX),
            serde_json::json!(0.5),
            serde_json::json!(1e20),
            serde_json::json!(-2.25e-7),
            serde_json::json!("u-1"),
            serde_json::json!(""),
            serde_json::json!(true),
            serde_json::json!([1, "a", {"b": null}]),
            serde_json::json!({"x": [1.5]}),
        ];
        for v in values {
            let body = serde_json::json!({"user": {"id": v}, "candidates": [1], "k": 1});
            let req: crate::api::RankRequest = serde_json::from_value(body).unwrap();
            let json_id = req.user.id.clone();
            let domain = req.into_domain();
            assert_eq!(
                user_key_of(domain.user.id.as_ref()),
                user_key(json_id.as_ref()),
                "{v}"
            );
        }
    }
}
