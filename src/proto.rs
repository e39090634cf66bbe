//! The protobuf encoding of the ranking API (`proto/prerank/v1/rank.proto`, docs/api.md "Protobuf").
//!
//! [`pb`] holds the prost types generated at build time (`build.rs`: `protox` compiles the `.proto` in
//! pure Rust, so no `protoc` is needed, and `prost-build` writes the Rust). A protobuf request is
//! decoded straight into the domain request ([`decode`]), exactly the one its JSON twin would give,
//! so validation, feature mapping, scoring and every error code are shared with JSON, never
//! duplicated. Only what JSON cannot express is checked here (a feature value with no case set, a
//! non-finite float, a behaviour field named `item_id`), with the same error codes JSON uses for the
//! nearest case. The conversions to and from the JSON wire types of [`crate::api`] serve tools and
//! tests that compare the two encodings (load-test bodies, responses).
//!
//! Decoding never panics: prost reports undecodable bytes as a [`prost::DecodeError`] naming the
//! message and field path, e.g. `failed to decode Protobuf message: RankRequest.candidates: buffer
//! underflow`.

use std::collections::BTreeMap;

use prost::Message;

use crate::api::{RankRequest, RankResponse, RankedItem};
use crate::request::{self, Value};

/// The generated types of package `prerank.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/prerank.v1.rs"));
}

/// Media type of protobuf bodies (requests and responses).
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// Why a protobuf request body could not be turned into a [`RankRequest`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    /// Not a decodable `RankRequest` (truncated, wrong wire type, bad UTF-8, ...): 400.
    #[error("{0}")]
    Malformed(String),
    /// Decodable but not a request JSON could express (a required field absent, ...): 422, the same
    /// code as the JSON shape error.
    #[error("{0}")]
    Shape(String),
    /// A feature value JSON could not carry either (no case set, NaN/infinity): 422, the same code as
    /// a JSON feature value the model refuses.
    #[error("{0}")]
    Feature(String),
}

/// Decodes a protobuf `RankRequest` body into the domain request (what the server does).
pub fn decode(body: &[u8]) -> Result<request::RankRequest, ProtoError> {
    let msg = pb::RankRequest::decode(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    request_from_pb(msg)
}

/// Decodes a protobuf `RankRequest` body into its JSON twin (tools and tests comparing the two
/// encodings; same checks as [`decode`]).
pub fn decode_request(body: &[u8]) -> Result<RankRequest, ProtoError> {
    decode(body).map(RankRequest::from)
}

/// Converts a decoded protobuf request into the domain request (checks as in [`decode`]).
pub fn request_from_pb(msg: pb::RankRequest) -> Result<request::RankRequest, ProtoError> {
    let user = msg
        .user
        .ok_or_else(|| ProtoError::Shape("missing field `user`".into()))?;
    let k = msg
        .k
        .ok_or_else(|| ProtoError::Shape("missing field `k`".into()))?;
    // JSON `"id": null` deserialises as an absent id; a protobuf null id means the same.
    let id = user
        .id
        .map(|v| value_from_pb(v, || "user.id".into()))
        .transpose()?
        .filter(|v| *v != Value::Null);
    let features = map_from_pb(user.features, |name| format!("user.features.{name}"))?;
    let behaviors = user
        .behaviors
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if b.fields.contains_key("item_id") {
                return Err(ProtoError::Shape(format!(
                    "user.behaviors[{i}].fields: `item_id` is reserved (it is Behavior.item_id)"
                )));
            }
            Ok(request::Behavior {
                item_id: b.item_id,
                fields: map_from_pb(b.fields, |name| format!("user.behaviors[{i}].{name}"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(request::RankRequest {
        request_id: msg.request_id,
        user: request::User {
            id,
            features,
            behaviors,
        },
        candidates: msg.candidates,
        k,
        options: request::RankOptions {
            model: msg.model,
            with_probability: msg.with_probability,
            bucket: msg.bucket,
        },
    })
}

fn map_from_pb(
    map: BTreeMap<String, pb::FeatureValue>,
    path: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, Value>, ProtoError> {
    map.into_iter()
        .map(|(name, v)| {
            let value = value_from_pb(v, || path(&name))?;
            Ok((name, value))
        })
        .collect()
}

/// One feature value as the domain value its JSON twin would decode to (integers normalised as
/// JSON's are: `Int` when they fit an i64).
fn value_from_pb(v: pb::FeatureValue, path: impl FnOnce() -> String) -> Result<Value, ProtoError> {
    use pb::feature_value::Kind;
    match v.kind {
        Some(Kind::StringValue(s)) => Ok(Value::Str(s)),
        Some(Kind::IntValue(i)) => Ok(Value::Int(i)),
        Some(Kind::UintValue(u)) => Ok(Value::from_u64(u)),
        Some(Kind::DoubleValue(d)) if d.is_finite() => Ok(Value::Float(d)),
        Some(Kind::DoubleValue(d)) => Err(ProtoError::Feature(format!(
            "{}: expected a finite number, found {d}",
            path()
        ))),
        Some(Kind::BoolValue(b)) => Ok(Value::Bool(b)),
        Some(Kind::NullValue(_)) => Ok(Value::Null),
        None => Err(ProtoError::Feature(format!(
            "{}: FeatureValue has no value set (expected a string, number, boolean or null)",
            path()
        ))),
    }
}

/// Why a JSON request cannot be expressed in protobuf: a feature value that is an array or object
/// (the server refuses those anyway, with `invalid_feature`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}: arrays and objects have no protobuf FeatureValue")]
pub struct EncodeError(pub String);

/// Encodes a request as protobuf (load-test bodies, tests): the inverse of [`decode_request`].
pub fn encode_request(req: &RankRequest) -> Result<Vec<u8>, EncodeError> {
    Ok(request_to_pb(req)?.encode_to_vec())
}

/// The protobuf message of a request.
pub fn request_to_pb(req: &RankRequest) -> Result<pb::RankRequest, EncodeError> {
    let user = &req.user;
    Ok(pb::RankRequest {
        request_id: req.request_id.clone(),
        user: Some(pb::User {
            id: user
                .id
                .as_ref()
                .map(|v| value_to_pb(v, || "user.id".into()))
                .transpose()?,
            features: map_to_pb(&user.features, |n| format!("user.features.{n}"))?,
            behaviors: user
                .behaviors
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    Ok(pb::Behavior {
                        item_id: b.item_id,
                        fields: map_to_pb(&b.fields, |n| format!("user.behaviors[{i}].{n}"))?,
                    })
                })
                .collect::<Result<_, EncodeError>>()?,
        }),
        candidates: req.candidates.clone(),
        k: Some(req.k),
        model: req.model.clone(),
        with_probability: req.with_probability,
        bucket: req.bucket.clone(),
    })
}

fn map_to_pb(
    map: &BTreeMap<String, serde_json::Value>,
    path: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, pb::FeatureValue>, EncodeError> {
    map.iter()
        .map(|(name, v)| Ok((name.clone(), value_to_pb(v, || path(name))?)))
        .collect()
}

fn value_to_pb(
    v: &serde_json::Value,
    path: impl FnOnce() -> String,
) -> Result<pb::FeatureValue, EncodeError> {
    use pb::feature_value::Kind;
    use serde_json::Value;
    let kind = match v {
        Value::Null => Kind::NullValue(pb::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Kind::IntValue(i),
            (None, Some(u), _) => Kind::UintValue(u),
            (None, None, Some(f)) => Kind::DoubleValue(f),
            (None, None, None) => return Err(EncodeError(path())),
        },
        Value::Array(_) | Value::Object(_) => return Err(EncodeError(path())),
    };
    Ok(pb::FeatureValue { kind: Some(kind) })
}

/// Encodes a response as protobuf.
pub fn encode_response(resp: &RankResponse) -> Vec<u8> {
    response_to_pb(resp).encode_to_vec()
}

/// The protobuf message of a response (every JSON field, same meaning).
pub fn response_to_pb(resp: &RankResponse) -> pb::RankResponse {
    pb::RankResponse {
        request_id: resp.request_id.clone(),
        bucket: resp.bucket.clone(),
        model: resp.model.clone(),
        version: resp.version,
        items: resp
            .items
            .iter()
            .map(|i| pb::RankedItem {
                item_id: i.item_id,
                score: i.score,
                probability: i.probability,
            })
            .collect(),
        candidates: resp.candidates as u64,
        unknown_candidates: resp.unknown_candidates as u64,
        unknown_candidate_ids: resp.unknown_candidate_ids.clone(),
        duplicate_candidates: resp.duplicate_candidates as u64,
        ignored_features: resp.ignored_features.clone(),
        dtype: resp.dtype.clone(),
        took_us: resp.took_us,
    }
}

/// The JSON response type of a protobuf response (clients and tests comparing the two encodings).
pub fn response_from_pb(msg: pb::RankResponse) -> RankResponse {
    RankResponse {
        request_id: msg.request_id,
        bucket: msg.bucket,
        model: msg.model,
        version: msg.version,
        items: msg
            .items
            .into_iter()
            .map(|i| RankedItem {
                item_id: i.item_id,
                score: i.score,
                probability: i.probability,
            })
            .collect(),
        candidates: usize::try_from(msg.candidates).unwrap_or(usize::MAX),
        unknown_candidates: usize::try_from(msg.unknown_candidates).unwrap_or(usize::MAX),
        unknown_candidate_ids: msg.unknown_candidate_ids,
        duplicate_candidates: usize::try_from(msg.duplicate_candidates).unwrap_or(usize::MAX),
        ignored_features: msg.ignored_features,
        dtype: msg.dtype,
        took_us: msg.took_us,
    }
}

/// Encodes an error body as protobuf.
pub fn encode_error(code: &str, message: &str) -> Vec<u8> {
    pb::ErrorBody {
        code: code.to_string(),
        message: message.to_string(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BehaviorJson, UserJson};
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(serde_json::Value::from),
            // Eighths: exact in binary and in JSON's decimal text, so the JSON twin compares equal.
            (-8_000_000i64..8_000_000).prop_map(|i| serde_json::Value::from(i as f64 / 8.0)),
            "[a-z0-9 é]{0,12}".prop_map(serde_json::Value::from),
        ]
    }

    fn fields() -> impl Strategy<Value = BTreeMap<String, serde_json::Value>> {
        proptest::collection::btree_map("[a-z_]{1,10}", scalar(), 0..5).prop_map(|mut m| {
            m.remove("item_id");
            m
        })
    }

    fn request() -> impl Strategy<Value = RankRequest> {
        (
            proptest::option::of("[ -~]{0,20}"),
            // A null id is an absent id in both encodings (see `request_from_pb`).
            proptest::option::of(scalar()).prop_map(|v| v.filter(|v| !v.is_null())),
            fields(),
            proptest::collection::vec((any::<u64>(), fields()), 0..8),
            proptest::collection::vec(any::<u64>(), 0..200),
            any::<i64>(),
            proptest::option::of("[a-z-]{0,8}"),
            any::<bool>(),
            proptest::option::of("[a-z]{0,8}"),
        )
            .prop_map(
                |(request_id, id, features, behaviors, candidates, k, model, wp, bucket)| {
                    RankRequest {
                        request_id,
                        user: UserJson {
                            id,
                            features,
                            behaviors: behaviors
                                .into_iter()
                                .map(|(item_id, fields)| BehaviorJson { item_id, fields })
                                .collect(),
                        },
                        candidates,
                        k,
                        model,
                        with_probability: wp,
                        bucket,
                    }
                },
            )
    }

    proptest! {
        /// encode -> decode gives back the same request (compared through its JSON form, which is
        /// what the rest of the server sees).
        #[test]
        fn request_round_trips(req in request()) {
            let bytes = encode_request(&req).unwrap();
            let back = decode_request(&bytes).unwrap();
            prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&req).unwrap());
            // And the JSON twin parses to the same request too.
            let json = serde_json::to_vec(&req).unwrap();
            let from_json: RankRequest = crate::api::parse_json(&json).unwrap();
            prop_assert_eq!(serde_json::to_value(&from_json).unwrap(), serde_json::to_value(&back).unwrap());
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
        }
    }

    #[test]
    fn fuzz_seeds_decode() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/rank_request_proto");
        for name in ["minimal.pb", "full.pb", "every_kind.pb"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let req = decode_request(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!req.candidates.is_empty(), "{name}");
        }
        let req = decode_request(&std::fs::read(dir.join("every_kind.pb")).unwrap()).unwrap();
        let f = &req.user.features;
        assert_eq!(f["gender"], serde_json::json!("f"));
        assert_eq!(f["age"], serde_json::json!(33));
        assert_eq!(f["big"], serde_json::json!(u64::MAX));
        assert_eq!(f["ratio"], serde_json::json!(0.5));
        assert_eq!(f["flag"], serde_json::json!(true));
        assert_eq!(f["none"], serde_json::Value::Null);
        assert_eq!(req.user.id, Some(serde_json::json!(42)));
        assert_eq!(
            (req.k, req.model.as_deref(), req.with_probability),
            (5, Some("m"), true)
        );
    }

    #[test]
    fn candidates_are_packed_fixed64() {
        let msg = pb::RankRequest {
            candidates: vec![1, 2, 3],
            ..Default::default()
        };
        let bytes = msg.encode_to_vec();
        // field 3, wire type 2 (length-delimited), 24 bytes: one packed run of three 8-byte ids.
        assert_eq!(&bytes[..2], &[(3 << 3) | 2, 24]);
        assert_eq!(bytes.len(), 2 + 24);
    }

    #[test]
    fn errors_name_the_field() {
        // Truncated: the candidates field announces 16 bytes and carries 8.
        let mut bytes = vec![(3 << 3) | 2, 16];
        bytes.extend_from_slice(&[0; 8]);
        let err = decode_request(&bytes).unwrap_err();
        assert!(
            matches!(&err, ProtoError::Malformed(m) if m.contains("RankRequest")),
            "{err}"
        );
        // Missing user / k are shape errors, like JSON's `missing field`.
        let err = decode_request(&pb::RankRequest::default().encode_to_vec()).unwrap_err();
        assert_eq!(err, ProtoError::Shape("missing field `user`".into()));
        let msg = pb::RankRequest {
            user: Some(pb::User::default()),
            ..Default::default()
        };
        let err = decode_request(&msg.encode_to_vec()).unwrap_err();
        assert_eq!(err, ProtoError::Shape("missing field `k`".into()));
        // A value with no case set names its feature.
        let msg = pb::RankRequest {
            user: Some(pb::User {
                features: BTreeMap::from([("age".into(), pb::FeatureValue { kind: None })]),
                ..Default::default()
            }),
            k: Some(1),
            ..Default::default()
        };
        let err = decode_request(&msg.encode_to_vec()).unwrap_err();
        assert!(
            matches!(&err, ProtoError::Feature(m) if m.starts_with("user.features.age:")),
            "{err}"
        );
    }
}
