//! The JSON wire types of the ranking API (`docs/api.md`): plain serde data shared by the HTTP layer,
//! the golden checks of a snapshot (whose sample requests use the same JSON) and the load generators.
//!
//! A decoded [`RankRequest`] becomes the domain request ([`crate::request::RankRequest`]) with
//! [`RankRequest::into_domain`] (moving, never failing: values the model refuses are refused by the
//! model, at the same step for every encoding); a [`RankResponse`] is built from the ranking
//! service's [`RankOutcome`]. Nothing below the HTTP layer sees these types.
//!
//! Each type derives `utoipa::ToSchema`: the OpenAPI document served at `/openapi.json` is generated
//! from these definitions (plus the routes in the http layer), so it cannot drift from the code.
//!
//! Parsing keeps the JSON path of a failure (`serde_path_to_error`), so a client learns which field was
//! wrong, e.g. `user.behaviors[3].item_id: invalid type: string "x", expected u64`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::request::{self, click_probability, Value};
use crate::service::RankOutcome;

/// `POST /v1/rank` request body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    /// Echoed in the response and the logs; generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    pub user: UserJson,
    /// Item ids to score. Unknown ids are skipped and counted; duplicates are scored once. At most
    /// `--max-candidates` (default 200000).
    #[schema(min_items = 1, max_items = 200_000)]
    pub candidates: Vec<u64>,
    /// How many items to return (1..=max_k; `--max-k`, default 10000).
    #[schema(minimum = 1, maximum = 10_000)]
    pub k: i64,
    /// Model to use; defaults to the server's default model.
    #[serde(default)]
    pub model: Option<String>,
    /// Also return `probability = sigmoid(score)` per item.
    #[serde(default)]
    pub with_probability: bool,
    /// A/B bucket override (QA): serve this configured bucket instead of the user's assigned one.
    /// The `x-prerank-bucket` header does the same; the body wins when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

/// The user: id, profile features and behaviour sequence (most recent first).
///
/// Deserialised by hand (see the `Deserialize` impl below) so that only a JSON object is accepted:
/// serde's derived impl would also take an array as a struct (`"user": []`), silently an empty user.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct UserJson {
    /// Value of the `user_id` feature (string or integer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub id: Option<serde_json::Value>,
    /// Profile features by name; names the model does not use are ignored and reported.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Value>)]
    pub features: BTreeMap<String, serde_json::Value>,
    /// Most recent first; at most `--max-behaviors` (default 1000).
    #[serde(default)]
    #[schema(max_items = 1_000)]
    pub behaviors: Vec<BehaviorJson>,
}

impl<'de> Deserialize<'de> for UserJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UserJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a user object with optional `id`, `features` and `behaviors`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UserJson, A::Error> {
                use serde::de::Error;
                let mut user = UserJson::default();
                let mut seen = [false; 3];
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "id" => 0,
                        "features" => 1,
                        "behaviors" => 2,
                        other => {
                            return Err(A::Error::unknown_field(
                                other,
                                &["id", "features", "behaviors"],
                            ))
                        }
                    };
                    if std::mem::replace(&mut seen[slot], true) {
                        return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    match slot {
                        0 => user.id = map.next_value()?,
                        1 => user.features = map.next_value()?,
                        _ => user.behaviors = map.next_value()?,
                    }
                }
                Ok(user)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One behaviour: the item and the per-behaviour extras (`action`, `seconds_ago`, `dwell_seconds`, ...),
/// optionally item attributes (`category`, `shop`, `brand`) overriding the snapshot's table.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BehaviorJson {
    pub item_id: u64,
    #[serde(flatten)]
    #[schema(value_type = BTreeMap<String, Value>)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// `POST /v1/rank` response body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RankResponse {
    pub request_id: String,
    /// The A/B bucket that served the request (`default` without a bucket config, `none` when the
    /// request named a model outside the bucket plan).
    #[serde(default)]
    pub bucket: String,
    pub model: String,
    pub version: u64,
    /// Top-k, by descending score (ties: ascending item id).
    pub items: Vec<RankedItem>,
    /// Candidates in the request.
    pub candidates: usize,
    /// Candidates not in the snapshot (skipped).
    pub unknown_candidates: usize,
    /// Up to 100 of the unknown ids, for debugging.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_candidate_ids: Vec<u64>,
    /// Repeated candidate ids (each item is scored once).
    pub duplicate_candidates: usize,
    /// Request feature names the model does not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_features: Vec<String>,
    /// Item vector dtype the scores were computed with.
    pub dtype: String,
    /// Server-side time spent on this request, microseconds.
    pub took_us: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RankedItem {
    pub item_id: u64,
    /// `tau * <u, v>`: the click logit.
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
}

/// Error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (see docs/api.md).
    pub code: String,
    /// Human-readable; names the offending field.
    pub message: String,
}

impl RankRequest {
    /// The domain request (moves every string; never fails).
    pub fn into_domain(self) -> request::RankRequest {
        request::RankRequest {
            request_id: self.request_id,
            user: self.user.into_domain(),
            candidates: self.candidates,
            k: self.k,
            options: request::RankOptions {
                model: self.model,
                with_probability: self.with_probability,
                bucket: self.bucket,
            },
        }
    }
}

impl UserJson {
    /// The domain user.
    pub fn into_domain(self) -> request::User {
        request::User {
            id: self.id.map(value_from_json),
            features: map_from_json(self.features),
            behaviors: self
                .behaviors
                .into_iter()
                .map(|b| request::Behavior {
                    item_id: b.item_id,
                    fields: map_from_json(b.fields),
                })
                .collect(),
        }
    }
}

/// The JSON twin of a domain request (tools and tests comparing encodings; the inverse of
/// [`RankRequest::into_domain`]).
impl From<request::RankRequest> for RankRequest {
    fn from(r: request::RankRequest) -> RankRequest {
        RankRequest {
            request_id: r.request_id,
            user: UserJson {
                id: r.user.id.map(value_to_json),
                features: map_to_json(r.user.features),
                behaviors: r
                    .user
                    .behaviors
                    .into_iter()
                    .map(|b| BehaviorJson {
                        item_id: b.item_id,
                        fields: map_to_json(b.fields),
                    })
                    .collect(),
            },
            candidates: r.candidates,
            k: r.k,
            model: r.options.model,
            with_probability: r.options.with_probability,
            bucket: r.options.bucket,
        }
    }
}

fn map_from_json(m: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, Value> {
    m.into_iter()
        .map(|(k, v)| (k, value_from_json(v)))
        .collect()
}

fn map_to_json(m: BTreeMap<String, Value>) -> BTreeMap<String, serde_json::Value> {
    m.into_iter().map(|(k, v)| (k, value_to_json(v))).collect()
}

/// One JSON value as a domain value: integers as `Int` when they fit an i64 (else `UInt`), other
/// numbers as `Float`, arrays and objects as their compact text.
fn value_from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::String(s) => Value::Str(s),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        composite @ (J::Array(_) | J::Object(_)) => Value::Composite(composite.to_string()),
    }
}

fn value_to_json(v: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Str(s) => J::String(s),
        Value::Int(i) => J::from(i),
        Value::UInt(u) => J::from(u),
        Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        Value::Composite(text) => serde_json::from_str(&text).unwrap_or(J::Null),
    }
}

impl From<RankOutcome> for RankResponse {
    fn from(o: RankOutcome) -> RankResponse {
        let with_probability = o.with_probability;
        RankResponse {
            request_id: o.request_id,
            bucket: o.bucket,
            model: o.model,
            version: o.version,
            items: o
                .items
                .iter()
                .map(|s| RankedItem {
                    item_id: s.item_id,
                    score: s.score,
                    probability: with_probability.then(|| click_probability(s.score)),
                })
                .collect(),
            candidates: o.candidates,
            unknown_candidates: o.stats.unknown,
            unknown_candidate_ids: o.stats.unknown_sample,
            duplicate_candidates: o.stats.duplicates,
            ignored_features: o.ignored_features,
            dtype: o.dtype.to_string(),
            took_us: o.took_us,
        }
    }
}

/// Why a body did not parse: JSON syntax (400) or shape/type (422), with the field path.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    Syntax(String),
    Shape(String),
}

/// Parses a JSON request body; on failure the message keeps the path of the first offending field.
///
/// Request bodies are JSON objects: a body that is a well-formed JSON value of another kind (array,
/// string, number, literal) is a shape error (422) even where serde would accept an array for a struct.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    check_object(body)?;
    // Fast path: plain serde_json. Tracking the path of every value costs ~25% of the decode time of
    // a large body (benches/decode.rs, docs/benchmarks.md), and only a failing body needs it, so a
    // body that fails is parsed again with tracking: same result, same error message.
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(_) => tracked(body),
    }
}

/// [`parse_json`] without the fast path: always tracks the field path (serde_path_to_error). Same
/// results; kept for the decode benchmark and the equivalence test.
pub fn parse_json_tracked<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    check_object(body)?;
    tracked(body)
}

fn check_object(body: &[u8]) -> Result<(), ParseError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if let Some(b) = first {
        if matches!(b, b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') {
            return Err(ParseError::Shape(
                "the request body must be a JSON object".to_string(),
            ));
        }
    }
    Ok(())
}

fn tracked<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        match inner.classify() {
            serde_json::error::Category::Data => ParseError::Shape(msg),
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ParseError::Syntax(msg),
        }
    })?;
    de.end().map_err(|e| ParseError::Syntax(e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path changes nothing: same requests, same errors (kind and message) as tracking the
    /// path on every body.
    #[test]
    fn fast_path_matches_tracked_parse() {
        let bodies = [
            r#"{"user": {}, "candidates": [1, 2], "k": 3}"#,
            r#"{"user": {"id": "u", "features": {"age": 3.5, "x": null}, "behaviors": [{"item_id": 9, "action": "buy"}]}, "candidates": [18446744073709551615], "k": -1, "model": "m", "with_probability": true, "bucket": "b", "request_id": "r"}"#,
            r#"{"user": {"behaviors": [{"item_id": 1}, {"item_id": "x"}]}, "candidates": [1], "k": 1}"#,
            r#"{"user": {}, "candidates": [1, 2, -3], "k": 1}"#,
            r#"{"user": {}, "candidates": [1, 2.5], "k": 1}"#,
            r#"{"user": {}, "candidates": [18446744073709551616], "k": 1}"#,
            r#"{"user": [], "candidates": [1], "k": 1}"#,
            r#"{"user": {"idd": 1}, "candidates": [1], "k": 1}"#,
            r#"{"user": {"id": 1, "id": 2}, "candidates": [1], "k": 1}"#,
            r#"{"user": {}, "candidates": [1], "k": 1, "extra": 0}"#,
            r#"{"user": {}, "candidates": [1]}"#,
            r#"{"user": {}, "candidates": [1], "k": 1} trailing"#,
            r#"{"user": {}, "candidates": [1, 2"#,
            r#"{"user": {"features": {"a": "\ud800"}}, "candidates": [1], "k": 1}"#,
            "[1]",
            "",
            "   ",
        ];
        for body in bodies {
            let fast = parse_json::<RankRequest>(body.as_bytes());
            let slow = parse_json_tracked::<RankRequest>(body.as_bytes());
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => assert_eq!(
                    serde_json::to_value(a).unwrap(),
                    serde_json::to_value(b).unwrap(),
                    "{body}"
                ),
                (Err(a), Err(b)) => assert_eq!(a, b, "{body}"),
                _ => panic!("{body}: {fast:?} vs {slow:?}"),
            }
        }
        // The path is still named.
        let err = parse_json::<RankRequest>(bodies[2].as_bytes()).unwrap_err();
        assert!(
            matches!(&err, ParseError::Shape(m) if m.starts_with("user.behaviors[1].item_id: ")),
            "{err:?}"
        );
    }

    /// JSON -> domain -> JSON gives back the same request, and the domain values are normalised
    /// (integers that fit an i64 are `Int`; arrays and objects keep their compact text).
    #[test]
    fn domain_conversion_round_trips() {
        let body = r#"{"request_id": "r", "user": {"id": [1, {"a": 2}], "features": {"age": 3.5,
            "x": null, "n": 18446744073709551615, "m": -4, "s": "é", "b": true, "o": {"k": [1]}},
            "behaviors": [{"item_id": 9, "action": "buy", "seconds_ago": 12}]},
            "candidates": [1, 2], "k": 3, "model": "m", "with_probability": true, "bucket": "b"}"#;
        let req = parse_json::<RankRequest>(body.as_bytes()).unwrap();
        let domain = req.clone().into_domain();
        let f = &domain.user.features;
        assert_eq!(f["n"], Value::UInt(u64::MAX));
        assert_eq!(f["m"], Value::Int(-4));
        assert_eq!(f["age"], Value::Float(3.5));
        assert_eq!(f["o"], Value::Composite(r#"{"k":[1]}"#.into()));
        assert_eq!(
            domain.user.id,
            Some(Value::Composite(r#"[1,{"a":2}]"#.into()))
        );
        assert_eq!(
            domain.user.behaviors[0].fields["seconds_ago"],
            Value::Int(12)
        );
        assert_eq!(
            (
                domain.k,
                domain.options.model.as_deref(),
                domain.options.with_probability
            ),
            (3, Some("m"), true)
        );
        let twin = RankRequest::from(domain);
        assert_eq!(
            serde_json::to_value(&twin).unwrap(),
            serde_json::to_value(&req).unwrap()
        );
    }
}
