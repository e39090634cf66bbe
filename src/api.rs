//! The wire types of the ranking API (`docs/api.md`): plain serde data shared by the HTTP layer, the
//! golden checks of a snapshot (whose sample requests use the same JSON) and the load generators.
//!
//! Each type derives `utoipa::ToSchema`: the OpenAPI document served at `/openapi.json` is generated
//! from these definitions (plus the routes in the http layer), so it cannot drift from the code.
//!
//! Parsing keeps the JSON path of a failure (`serde_path_to_error`), so a client learns which field was
//! wrong, e.g. `user.behaviors[3].item_id: invalid type: string "x", expected u64`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}
