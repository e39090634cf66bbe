//! The student user tower (docs/snapshot-format.md section 4), in ndarray.
//!
//! Pure and synchronous: no I/O, no async, no wire format: the input is the domain request's
//! [`User`], borrowed as a [`UserInput`]. [`TowerLayout`] resolves, once per snapshot load, where each
//! tensor lives in the weights file and where each behaviour feature comes from (the request, the item
//! attribute table, the item id); [`TowerLayout::forward`] then computes one user vector per request
//! from borrowed weights, so the weights are never copied (they stay in the memory map).
//!
//! Invariant: the output is L2-normalised (or all zero only if the last layer outputs exactly zero).

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};
use prerank_format::attrs::ItemAttributes;
use prerank_format::features::{FeatureSpec, FeatureValueError, RawValue};
use prerank_format::index::IdIndex;
use prerank_format::weights::{TensorInfo, Weights};
use prerank_format::Manifest;

use crate::request::{User, Value};

/// Errors of the model layer: a request value the feature spec cannot map, or a snapshot whose
/// tensors do not fit its manifest (caught at load, so never seen per request).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    Feature { path: String, reason: String },
    #[error("weights: {0}")]
    Weights(String),
}

/// Where a behaviour item feature's value comes from.
#[derive(Debug, Clone)]
enum Source {
    /// The behaviour's `item_id`.
    ItemId,
    /// The request's behaviour object, else column `.0` of the attribute table.
    Attribute(usize),
    /// The request's behaviour object only.
    Request,
}

#[derive(Debug, Clone)]
struct Embedding {
    spec: FeatureSpec,
    table: TensorInfo,
}

#[derive(Debug, Clone)]
struct Linear {
    weight: TensorInfo,
    bias: TensorInfo,
    out: usize,
    inp: usize,
}

/// Tensor locations and hyper-parameters of one snapshot's user tower.
#[derive(Debug, Clone)]
pub struct TowerLayout {
    user: Vec<Embedding>,
    behavior_item: Vec<(Embedding, Source)>,
    behavior_extras: Vec<Embedding>,
    max_len: usize,
    d_model: usize,
    heads: usize,
    eps: f32,
    slope: f32,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: (TensorInfo, TensorInfo),
    ln2: (TensorInfo, TensorInfo),
    ffn1: Linear,
    ffn2: Linear,
    tower: [Linear; 3],
}

/// The read-only data a forward pass borrows: weights, and the item tables for behaviour lookups.
#[derive(Debug, Clone, Copy)]
pub struct TowerData<'a, B> {
    pub weights: &'a Weights<B>,
    pub index: &'a IdIndex<B>,
    pub attributes: &'a ItemAttributes<B>,
}

/// Raw values of one user, borrowed from the request.
#[derive(Debug, Clone, Default)]
pub struct UserInput<'a> {
    pub features: Vec<(&'a str, RawValue<'a>)>,
    pub behaviors: Vec<BehaviorInput<'a>>,
}

#[derive(Debug, Clone)]
pub struct BehaviorInput<'a> {
    pub item_id: u64,
    pub fields: Vec<(&'a str, RawValue<'a>)>,
}

/// A request value as a raw feature value; `path` names it in errors (built only on error).
fn raw_value<'a>(v: &'a Value, path: impl FnOnce() -> String) -> Result<RawValue<'a>, ModelError> {
    match v {
        Value::Null => Ok(RawValue::Missing),
        Value::Bool(b) => Ok(RawValue::Bool(*b)),
        Value::Str(s) => Ok(RawValue::Str(s)),
        Value::Int(i) => Ok(RawValue::Int(*i)),
        Value::UInt(u) => Ok(RawValue::UInt(*u)),
        Value::Float(f) => Ok(RawValue::Float(*f)),
        Value::Composite(_) => Err(ModelError::Feature {
            path: path(),
            reason: "expected a string, number, boolean or null".into(),
        }),
    }
}

impl<'a> UserInput<'a> {
    /// Borrows a request's user. `user.id` becomes the `user_id` feature.
    pub fn new(user: &'a User) -> Result<UserInput<'a>, ModelError> {
        let mut features = Vec::with_capacity(user.features.len() + 1);
        if let Some(id) = &user.id {
            if user.features.contains_key("user_id") {
                return Err(ModelError::Feature {
                    path: "user.features.user_id".into(),
                    reason: "given twice (also as user.id)".into(),
                });
            }
            features.push(("user_id", raw_value(id, || "user.id".into())?));
        }
        for (name, v) in &user.features {
            features.push((
                name.as_str(),
                raw_value(v, || format!("user.features.{name}"))?,
            ));
        }
        let mut behaviors = Vec::with_capacity(user.behaviors.len());
        for (j, b) in user.behaviors.iter().enumerate() {
            let mut fields = Vec::with_capacity(b.fields.len());
            for (name, v) in &b.fields {
                fields.push((
                    name.as_str(),
                    raw_value(v, || format!("user.behaviors[{j}].{name}"))?,
                ));
            }
            behaviors.push(BehaviorInput {
                item_id: b.item_id,
                fields,
            });
        }
        Ok(UserInput {
            features,
            behaviors,
        })
    }
}

fn lookup<'a>(fields: &[(&str, RawValue<'a>)], name: &str) -> Option<RawValue<'a>> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn feature_err(path: String, e: FeatureValueError) -> ModelError {
    ModelError::Feature {
        path,
        reason: e.to_string(),
    }
}

impl TowerLayout {
    /// Resolves every tensor of the manifest's architecture in `weights`. The format layer has already
    /// checked names and shapes; this only records where they are.
    pub fn new<B: AsRef<[u8]>>(
        manifest: &Manifest,
        weights: &Weights<B>,
    ) -> Result<Self, ModelError> {
        let t = |name: &str| -> Result<TensorInfo, ModelError> {
            weights
                .tensors()
                .get(name)
                .cloned()
                .ok_or_else(|| ModelError::Weights(format!("missing tensor {name}")))
        };
        let lin = |name: &str| -> Result<Linear, ModelError> {
            let weight = t(&format!("{name}.weight"))?;
            let bias = t(&format!("{name}.bias"))?;
            if weight.shape.len() != 2 || bias.shape != [weight.shape[0]] {
                return Err(ModelError::Weights(format!("{name}: inconsistent shapes")));
            }
            Ok(Linear {
                out: weight.shape[0],
                inp: weight.shape[1],
                weight,
                bias,
            })
        };
        let emb = |group: &str, spec: &FeatureSpec| -> Result<Embedding, ModelError> {
            Ok(Embedding {
                spec: spec.clone(),
                table: t(&format!("emb.{group}.{}", spec.name))?,
            })
        };
        let f = &manifest.features;
        let a = &manifest.architecture;
        let behavior_item = f
            .behavior
            .item
            .iter()
            .map(|spec| {
                let source = if spec.name == "item_id" {
                    Source::ItemId
                } else if let Some(col) = manifest
                    .items
                    .attributes
                    .iter()
                    .position(|n| *n == spec.name)
                {
                    Source::Attribute(col)
                } else {
                    Source::Request
                };
                Ok((emb("behavior", spec)?, source))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(TowerLayout {
            user: f
                .user
                .iter()
                .map(|s| emb("user", s))
                .collect::<Result<_, _>>()?,
            behavior_item,
            behavior_extras: f
                .behavior
                .extras
                .iter()
                .map(|s| emb("behavior", s))
                .collect::<Result<_, _>>()?,
            max_len: f.behavior.max_len,
            d_model: a.d_model,
            heads: a.heads,
            eps: a.layer_norm_eps,
            slope: a.leaky_relu_slope,
            q: lin("attn.q")?,
            k: lin("attn.k")?,
            v: lin("attn.v")?,
            out: lin("attn.out")?,
            ln1: (t("attn.ln1.weight")?, t("attn.ln1.bias")?),
            ln2: (t("attn.ln2.weight")?, t("attn.ln2.bias")?),
            ffn1: lin("attn.ffn1")?,
            ffn2: lin("attn.ffn2")?,
            tower: [lin("tower.0")?, lin("tower.1")?, lin("tower.2")?],
        })
    }

    /// Names of the request's user features that this model does not use.
    pub fn ignored_features(&self, input: &UserInput<'_>) -> Vec<String> {
        input
            .features
            .iter()
            .filter(|(n, _)| !self.user.iter().any(|e| e.spec.name == *n))
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// Dimension of the user vector.
    pub fn output_dim(&self) -> usize {
        self.tower[2].out
    }

    /// Maximum behaviours used (longer sequences are truncated).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Computes the L2-normalised user vector.
    pub fn forward<B: AsRef<[u8]>>(
        &self,
        data: TowerData<'_, B>,
        input: &UserInput<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        let w = data.weights;
        let d = self.d_model;

        // Behaviour tokens: [n, d_model].
        let n = input.behaviors.len().min(self.max_len);
        let mut x = Array2::<f32>::zeros((n, d));
        for (j, b) in input.behaviors.iter().take(n).enumerate() {
            let item_row = data.index.get(b.item_id).map(|r| r as usize);
            let mut col = 0;
            for (e, source) in &self.behavior_item {
                let value = match source {
                    Source::ItemId => RawValue::UInt(b.item_id),
                    Source::Attribute(c) => lookup(&b.fields, &e.spec.name).unwrap_or_else(|| {
                        item_row.map_or(RawValue::Missing, |r| {
                            RawValue::UInt(data.attributes.row(r)[*c])
                        })
                    }),
                    Source::Request => lookup(&b.fields, &e.spec.name).unwrap_or(RawValue::Missing),
                };
                let row = e.spec.row(value).map_err(|err| {
                    feature_err(format!("user.behaviors[{j}].{}", e.spec.name), err)
                })?;
                copy_row(w, e, row, x.slice_mut(s![j, col..col + e.spec.dim]));
                col += e.spec.dim;
            }
            for e in &self.behavior_extras {
                let value = lookup(&b.fields, &e.spec.name).unwrap_or(RawValue::Missing);
                let row = e.spec.row(value).map_err(|err| {
                    feature_err(format!("user.behaviors[{j}].{}", e.spec.name), err)
                })?;
                copy_row(w, e, row, x.slice_mut(s![j, col..col + e.spec.dim]));
                col += e.spec.dim;
            }
        }

        let pooled = if n == 0 {
            Array1::<f32>::zeros(d)
        } else {
            let q = linear2(w, &self.q, x.view());
            let k = linear2(w, &self.k, x.view());
            let v = linear2(w, &self.v, x.view());
            let dh = d / self.heads;
            let scale = 1.0 / (dh as f32).sqrt();
            let mut heads = Array2::<f32>::zeros((n, d));
            for h in 0..self.heads {
                let cols = s![.., h * dh..(h + 1) * dh];
                let mut att = q.slice(cols).dot(&k.slice(cols).t()) * scale;
                for mut r in att.rows_mut() {
                    let m = r.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    r.mapv_inplace(|z| (z - m).exp());
                    let sum = r.sum();
                    r.mapv_inplace(|z| z / sum);
                }
                heads.slice_mut(cols).assign(&att.dot(&v.slice(cols)));
            }
            let attn = linear2(w, &self.out, heads.view());
            let h1 = layer_norm(w, &self.ln1, &(x + attn), self.eps);
            let mut f = linear2(w, &self.ffn1, h1.view());
            f.mapv_inplace(|z| z.max(0.0));
            let f = linear2(w, &self.ffn2, f.view());
            let h2 = layer_norm(w, &self.ln2, &(h1 + f), self.eps);
            h2.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d))
        };

        // Tower input: user feature embeddings in spec order, then the pooled sequence.
        let user_dim: usize = self.user.iter().map(|e| e.spec.dim).sum();
        let mut z = Array1::<f32>::zeros(user_dim + d);
        let mut col = 0;
        for e in &self.user {
            let value = lookup(&input.features, &e.spec.name).unwrap_or(RawValue::Missing);
            let path = if e.spec.name == "user_id" {
                "user.id".to_string()
            } else {
                format!("user.features.{}", e.spec.name)
            };
            let row = e.spec.row(value).map_err(|err| feature_err(path, err))?;
            copy_row(w, e, row, z.slice_mut(s![col..col + e.spec.dim]));
            col += e.spec.dim;
        }
        z.slice_mut(s![col..]).assign(&pooled);

        let slope = self.slope;
        let leaky = |v: f32| if v >= 0.0 { v } else { slope * v };
        let mut z = linear1(w, &self.tower[0], z.view());
        z.mapv_inplace(leaky);
        let mut z = linear1(w, &self.tower[1], z.view());
        z.mapv_inplace(leaky);
        let mut z = linear1(w, &self.tower[2], z.view());
        let norm = z.dot(&z).sqrt().max(1e-12);
        z.mapv_inplace(|v| v / norm);
        Ok(z.to_vec())
    }
}

fn copy_row<B: AsRef<[u8]>>(
    w: &Weights<B>,
    e: &Embedding,
    row: usize,
    mut dst: ndarray::ArrayViewMut1<'_, f32>,
) {
    let table = w.data(&e.table);
    let dim = e.spec.dim;
    dst.assign(&ArrayView1::from(&table[row * dim..(row + 1) * dim]));
}

fn matrix<'w, B: AsRef<[u8]>>(w: &'w Weights<B>, l: &Linear) -> ArrayView2<'w, f32> {
    // Shapes were checked against the manifest at load; a mismatch here is a bug, not bad input.
    ArrayView2::from_shape((l.out, l.inp), w.data(&l.weight)).expect("weight shape checked at load")
}

/// `x W^T + b` for a batch of rows.
fn linear2<B: AsRef<[u8]>>(w: &Weights<B>, l: &Linear, x: ArrayView2<'_, f32>) -> Array2<f32> {
    x.dot(&matrix(w, l).t()) + ArrayView1::from(w.data(&l.bias))
}

/// `W x + b` for one vector.
fn linear1<B: AsRef<[u8]>>(w: &Weights<B>, l: &Linear, x: ArrayView1<'_, f32>) -> Array1<f32> {
    matrix(w, l).dot(&x) + ArrayView1::from(w.data(&l.bias))
}

fn layer_norm<B: AsRef<[u8]>>(
    w: &Weights<B>,
    (gamma, beta): &(TensorInfo, TensorInfo),
    x: &Array2<f32>,
    eps: f32,
) -> Array2<f32> {
    let g = ArrayView1::from(w.data(gamma));
    let b = ArrayView1::from(w.data(beta));
    let mut out = x.clone();
    for mut r in out.rows_mut() {
        let n = r.len() as f32;
        let mean = r.sum() / n;
        let var = r.fold(0.0, |a, &v| a + (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + eps).sqrt();
        r.mapv_inplace(|v| (v - mean) * inv);
        r *= &g;
        r += &b;
    }
    out
}
