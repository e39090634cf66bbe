//! The domain request: what one ranking call asks for, whichever wire it came over.
//!
//! JSON ([`crate::api`]) and protobuf ([`crate::proto`]) each decode into a [`RankRequest`]; the user
//! tower, the snapshot, the registry and the ranking service know only this type. It carries values
//! as the client gave them (nothing is mapped to a feature row here: that needs the model's feature
//! spec, [`crate::model`]), so every later error is reported at the same step whatever the encoding.
//!
//! Validation against the server's limits is [`RankRequest::validate`], written once.
//!
//! Invariants: integer values are [`Value::Int`] when they fit an `i64` and [`Value::UInt`] only
//! above `i64::MAX` (both decoders normalise so, [`Value::from_u64`]); a [`Value::Composite`] (an
//! array or object, which no feature accepts) keeps its compact JSON text, so the A/B assignment of
//! such a user id is the same as before it was decoded.

use std::collections::BTreeMap;

/// One ranking request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RankRequest {
    /// Echoed in the response and the logs; the transport's id is used when absent or empty.
    pub request_id: Option<String>,
    pub user: User,
    /// Item ids to score (unknown ids are skipped and counted, repeated ids scored once).
    pub candidates: Vec<u64>,
    /// How many items to return, as the client sent it ([`RankRequest::validate`] checks the range).
    pub k: i64,
    pub options: RankOptions,
}

/// What the client chose besides the user and the candidates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RankOptions {
    /// Model to use; `None`: the server's default model (or the bucket's).
    pub model: Option<String>,
    /// Also return `probability = sigmoid(score)` per item.
    pub with_probability: bool,
    /// A/B bucket override (QA), from the body; wins over a transport-level override.
    pub bucket: Option<String>,
}

/// The user: id, profile features by name, behaviour sequence (most recent first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct User {
    /// Value of the `user_id` feature, and the A/B assignment key.
    pub id: Option<Value>,
    pub features: BTreeMap<String, Value>,
    pub behaviors: Vec<Behavior>,
}

/// One behaviour: the item and its per-behaviour fields (extras, attribute overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub item_id: u64,
    pub fields: BTreeMap<String, Value>,
}

/// A raw feature value as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Only for integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    /// An array or object (refused by every feature); its compact JSON text.
    Composite(String),
}

impl Value {
    /// An unsigned integer, normalised: [`Value::Int`] when it fits.
    pub fn from_u64(u: u64) -> Value {
        match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        }
    }
}

/// Request limits; defaults are documented in docs/api.md and `prerank serve --help`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_candidates: usize,
    pub max_behaviors: usize,
    pub max_k: usize,
    /// Requests computing at once (the ranking service's permits).
    pub max_inflight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_candidates: 200_000,
            max_behaviors: 1_000,
            max_k: 10_000,
            max_inflight: 64,
        }
    }
}

/// A request outside the limits (each names its field, as docs/api.md lists them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("k: must be between 1 and {max}, found {k}")]
    InvalidK { k: i64, max: usize },
    #[error("candidates: must not be empty")]
    EmptyCandidates,
    #[error("candidates: at most {max} allowed, found {found}")]
    TooManyCandidates { found: usize, max: usize },
    #[error("user.behaviors: at most {max} allowed, found {found}")]
    TooManyBehaviors { found: usize, max: usize },
}

impl RankRequest {
    /// Checks the request against `limits` (in this order: k, candidates, behaviours) and returns
    /// `k` as a count.
    pub fn validate(&self, limits: &Limits) -> Result<usize, RequestError> {
        let k = usize::try_from(self.k)
            .ok()
            .filter(|k| (1..=limits.max_k).contains(k))
            .ok_or(RequestError::InvalidK {
                k: self.k,
                max: limits.max_k,
            })?;
        if self.candidates.is_empty() {
            return Err(RequestError::EmptyCandidates);
        }
        if self.candidates.len() > limits.max_candidates {
            return Err(RequestError::TooManyCandidates {
                found: self.candidates.len(),
                max: limits.max_candidates,
            });
        }
        if self.user.behaviors.len() > limits.max_behaviors {
            return Err(RequestError::TooManyBehaviors {
                found: self.user.behaviors.len(),
                max: limits.max_behaviors,
            });
        }
        Ok(k)
    }

    /// `k` as a count for callers that ranked without [`RankRequest::validate`] (golden checks,
    /// warm-up): non-positive is 0.
    pub fn k_or_zero(&self) -> usize {
        usize::try_from(self.k).unwrap_or(0)
    }
}

/// The click probability of a logit: `sigmoid(score)`.
pub fn click_probability(score: f32) -> f32 {
    1.0 / (1.0 + (-score).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(k: i64, candidates: usize, behaviors: usize) -> RankRequest {
        RankRequest {
            user: User {
                behaviors: (0..behaviors)
                    .map(|i| Behavior {
                        item_id: i as u64,
                        fields: BTreeMap::new(),
                    })
                    .collect(),
                ..User::default()
            },
            candidates: vec![7; candidates],
            k,
            ..RankRequest::default()
        }
    }

    /// Each limit, at and past its edge, in the documented order (k first, behaviours last).
    #[test]
    fn validation_names_the_first_field_out_of_its_limit() {
        let limits = Limits {
            max_candidates: 10,
            max_behaviors: 3,
            max_k: 5,
            ..Limits::default()
        };
        let cases: [(RankRequest, Result<usize, RequestError>); 9] = [
            (request(1, 1, 0), Ok(1)),
            (request(5, 10, 3), Ok(5)),
            (
                request(0, 1, 0),
                Err(RequestError::InvalidK { k: 0, max: 5 }),
            ),
            (
                request(-3, 1, 0),
                Err(RequestError::InvalidK { k: -3, max: 5 }),
            ),
            (
                request(6, 1, 0),
                Err(RequestError::InvalidK { k: 6, max: 5 }),
            ),
            (request(1, 0, 0), Err(RequestError::EmptyCandidates)),
            (
                request(1, 11, 0),
                Err(RequestError::TooManyCandidates { found: 11, max: 10 }),
            ),
            (
                request(1, 1, 4),
                Err(RequestError::TooManyBehaviors { found: 4, max: 3 }),
            ),
            // Several problems: k is reported first.
            (
                request(0, 0, 9),
                Err(RequestError::InvalidK { k: 0, max: 5 }),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(req.validate(&limits), want, "{req:?}");
        }
    }

    #[test]
    fn integers_are_normalised_and_probability_is_the_sigmoid() {
        assert_eq!(Value::from_u64(5), Value::Int(5));
        assert_eq!(Value::from_u64(u64::MAX), Value::UInt(u64::MAX));
        assert_eq!(
            Value::from_u64(i64::MAX as u64),
            Value::Int(i64::MAX),
            "the largest i64 is still an Int"
        );
        assert_eq!(click_probability(0.0), 0.5);
        assert!((click_probability(2.0) - 0.880_797).abs() < 1e-6);
    }
}
