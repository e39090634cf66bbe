//! The models of the PFD paper (section 5.2) as candle graphs: the shared input components, the
//! inner-product student, and the five teachers (none, LUPI, MD, PFD, PFD+MD).
//!
//! Parameter groups (by name prefix), which the loss and the gradient-isolation test rely on:
//! - `shared.`: embedding tables of profile, behaviour and item features and the behaviour
//!   self-attention encoder, used by both the student and the teacher.
//! - `student.`: the student's own user-id embedding and its user and item towers. This is what is
//!   exported (with `shared.` embeddings and encoder), renamed to the contract's tensor names.
//! - `teacher.`: the teacher's user-id embedding, the privileged-feature embeddings and the teacher
//!   network. Only the teacher's own log-loss reaches these.
//!
//! The student user tower computes exactly `docs/snapshot-format.md` section 4 (with batch norm in
//! place of the folded `T0`/`T1` during training); padding of variable-length sequences is masked so
//! that padded positions change nothing.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use prerank_format::features::{FeatureSet, FeatureSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Batch;
use crate::error::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Which method of Table 2 a model implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The student alone on hard labels.
    Baseline,
    /// Teacher: an MLP on the privileged features only.
    Lupi,
    /// Teacher: an MLP on the regular features (model distillation).
    Md,
    /// Teacher: an inner-product model with the privileged features on its user side.
    Pfd,
    /// Teacher: an MLP on the regular and the privileged features.
    #[value(name = "pfd+md")]
    #[serde(rename = "pfd+md")]
    PfdMd,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Baseline,
        Method::Lupi,
        Method::Md,
        Method::Pfd,
        Method::PfdMd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Lupi => "lupi",
            Method::Md => "md",
            Method::Pfd => "pfd",
            Method::PfdMd => "pfd+md",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Method::Baseline => "Baseline",
            Method::Lupi => "LUPI",
            Method::Md => "MD",
            Method::Pfd => "PFD",
            Method::PfdMd => "PFD+MD",
        }
    }

    pub fn has_teacher(self) -> bool {
        !matches!(self, Method::Baseline)
    }
}

/// Architecture and feature configuration of a model (student and teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Inputs of the student user tower: the manifest's `features` block.
    pub features: FeatureSet,
    /// Privileged (interacted) features, bucketized counts; teacher only.
    pub privileged: Vec<FeatureSpec>,
    /// Names of the `features.behavior.item` tables that also embed the candidate item.
    pub item_features: Vec<String>,
    pub heads: usize,
    pub ffn_dim: usize,
    pub layer_norm_eps: f64,
    /// Student user and item towers (and the PFD teacher's); last = item vector dim.
    pub tower_widths: Vec<usize>,
    /// Hidden widths of the teacher MLP (LUPI, MD, PFD+MD).
    pub teacher_widths: Vec<usize>,
    pub leaky_relu_slope: f64,
    pub tau: f64,
    /// Standard deviation of embedding initialisation.
    pub emb_init_std: f64,
    /// Batch-norm running-statistics momentum.
    pub bn_momentum: f64,
    pub bn_eps: f64,
}

impl ModelConfig {
    /// The configuration used for Table 2 and the bundled model (d_model 64, towers 256-128-128).
    pub fn standard(max_len: usize) -> Self {
        Self::build(
            max_len,
            [16, 4, 4, 4],
            [24, 12, 12, 6, 2, 4, 4],
            [20_000, 25_000, 500, 2_500, 1_000],
            4,
            128,
            vec![256, 128, 128],
            vec![256, 128, 64],
            8,
        )
    }

    /// A tiny configuration for tests (d_model 16).
    pub fn tiny(max_len: usize) -> Self {
        Self::build(
            max_len,
            [4, 2, 2, 2],
            [6, 2, 2, 2, 2, 1, 1],
            [500, 1_000, 50, 100, 60],
            2,
            16,
            vec![16, 16, 8],
            vec![16, 8, 8],
            2,
        )
    }

    // Nine positional sizes: `too_many_arguments` is on again workspace-wide (issue 13); this
    // constructor moves with `ModelConfig` into its own module (issue 13 item 7, the trainer's
    // branch), where a struct of sizes can replace the list.
    #[allow(clippy::too_many_arguments)]
    fn build(
        max_len: usize,
        user_dims: [usize; 4],
        token_dims: [usize; 7],
        buckets: [u64; 5],
        heads: usize,
        ffn_dim: usize,
        tower_widths: Vec<usize>,
        teacher_widths: Vec<usize>,
        priv_dim: usize,
    ) -> Self {
        let [user_b, item_b, cat_b, shop_b, brand_b] = buckets;
        let features = FeatureSet {
            user: vec![
                FeatureSpec::hashed("user_id", user_b, user_dims[0]),
                FeatureSpec::bucketized(
                    "age",
                    &[18.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0],
                    user_dims[1],
                ),
                FeatureSpec::hashed("gender", 4, user_dims[2]),
                FeatureSpec::hashed("purchase_level", 8, user_dims[3]),
            ],
            behavior: prerank_format::features::BehaviorSpec {
                max_len,
                item: vec![
                    FeatureSpec::hashed("item_id", item_b, token_dims[0]),
                    FeatureSpec::hashed("category", cat_b, token_dims[1]),
                    FeatureSpec::hashed("shop", shop_b, token_dims[2]),
                    FeatureSpec::hashed("brand", brand_b, token_dims[3]),
                ],
                extras: vec![
                    FeatureSpec::hashed("action", 8, token_dims[4]),
                    FeatureSpec::bucketized(
                        "seconds_ago",
                        &[300.0, 3_600.0, 21_600.0, 86_400.0, 259_200.0, 604_800.0],
                        token_dims[5],
                    ),
                    FeatureSpec::bucketized(
                        "dwell_seconds",
                        &[5.0, 15.0, 30.0, 60.0, 120.0],
                        token_dims[6],
                    ),
                ],
            },
        };
        let counts = [1.0, 2.0, 3.0, 5.0, 8.0];
        let privileged = crate::logs::PRIVILEGED
            .iter()
            .map(|n| FeatureSpec::bucketized(n, &counts, priv_dim))
            .collect();
        ModelConfig {
            features,
            privileged,
            item_features: ["item_id", "category", "shop", "brand"]
                .map(String::from)
                .to_vec(),
            heads,
            ffn_dim,
            layer_norm_eps: 1e-5,
            tower_widths,
            teacher_widths,
            leaky_relu_slope: 0.01,
            tau: 5.0,
            emb_init_std: 0.05,
            bn_momentum: 0.01,
            bn_eps: 1e-5,
        }
    }

    pub fn d_model(&self) -> usize {
        self.features.token_dim()
    }

    pub fn validate(&self) -> Result<()> {
        self.features.validate().map_err(TrainError::Config)?;
        let d = self.d_model();
        if self.heads == 0 || !d.is_multiple_of(self.heads) {
            return Err(TrainError::Config(format!(
                "d_model {d} is not divisible by heads {}",
                self.heads
            )));
        }
        if self.tower_widths.len() != 3 || self.teacher_widths.is_empty() {
            return Err(TrainError::Config(
                "tower_widths must have 3 entries and teacher_widths at least one".into(),
            ));
        }
        for n in &self.item_features {
            if !self.features.behavior.item.iter().any(|f| &f.name == n) {
                return Err(TrainError::Config(format!(
                    "item feature {n:?} is not a behaviour item feature"
                )));
            }
        }
        Ok(())
    }

    /// Width of the candidate-item embedding (concatenation of the item feature tables).
    pub fn item_input_dim(&self) -> usize {
        self.item_features
            .iter()
            .filter_map(|n| self.features.behavior.item.iter().find(|f| &f.name == n))
            .map(|f| f.dim)
            .sum()
    }

    pub fn privileged_dim(&self) -> usize {
        self.privileged.iter().map(|f| f.dim).sum()
    }
}

/// Named parameters (trainable [`Var`]s) and buffers (batch-norm running statistics).
#[derive(Debug)]
pub struct Params {
    /// Trainable parameters by name.
    pub vars: BTreeMap<String, Var>,
    /// Non-trainable state saved with checkpoints.
    pub buffers: BTreeMap<String, Var>,
    rng: ChaCha8Rng,
    device: Device,
}

impl Params {
    pub fn new(seed: u64) -> Self {
        Params {
            vars: BTreeMap::new(),
            buffers: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: Device::Cpu,
        }
    }

    fn add(
        &mut self,
        name: String,
        shape: &[usize],
        init: impl Fn(&mut ChaCha8Rng) -> f32,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| init(&mut self.rng)).collect();
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.vars.insert(name, var);
        Ok(out)
    }

    fn uniform(&mut self, name: String, shape: &[usize], bound: f64) -> Result<Tensor> {
        let b = bound as f32;
        self.add(name, shape, move |r| r.gen_range(-b..=b))
    }

    fn normal(&mut self, name: String, shape: &[usize], std: f64) -> Result<Tensor> {
        let s = std as f32;
        self.add(name, shape, move |r| {
            let u1: f32 = r.gen_range(f32::EPSILON..1.0);
            let u2: f32 = r.gen();
            s * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
    }

    fn constant(&mut self, name: String, shape: &[usize], value: f32) -> Result<Tensor> {
        self.add(name, shape, move |_| value)
    }

    fn buffer(&mut self, name: String, shape: &[usize], value: f32) -> Result<Var> {
        let var = Var::from_tensor(&Tensor::full(value, shape, &self.device)?)?;
        self.buffers.insert(name, var.clone());
        Ok(var)
    }

    /// Trainable variables whose name starts with `prefix`.
    pub fn group(&self, prefix: &str) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// All tensors (parameters and buffers) by name, for checkpoints.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .chain(&self.buffers)
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every parameter and buffer from `tensors` (names and shapes must match).
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.vars.iter().chain(&self.buffers) {
            let t = tensors
                .get(name)
                .ok_or_else(|| TrainError::Config(format!("checkpoint lacks tensor {name}")))?;
            if t.dims() != var.dims() {
                return Err(TrainError::Config(format!(
                    "checkpoint tensor {name}: shape {:?}, model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// `y = x W^T + b`, `W: [out, in]` (the contract's convention).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    fn new(p: &mut Params, name: &str, inp: usize, out: usize) -> Result<Self> {
        let bound = 1.0 / (inp as f64).sqrt();
        Ok(Linear {
            weight: p.uniform(format!("{name}.weight"), &[out, inp], bound)?,
            bias: p.uniform(format!("{name}.bias"), &[out], bound)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Batch normalisation over the batch dimension, with running statistics for evaluation.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    momentum: f64,
}

impl BatchNorm {
    fn new(p: &mut Params, name: &str, dim: usize, eps: f64, momentum: f64) -> Result<Self> {
        Ok(BatchNorm {
            gamma: p.constant(format!("{name}.gamma"), &[dim], 1.0)?,
            beta: p.constant(format!("{name}.beta"), &[dim], 0.0)?,
            running_mean: p.buffer(format!("{name}.running_mean"), &[dim], 0.0)?,
            running_var: p.buffer(format!("{name}.running_var"), &[dim], 1.0)?,
            eps,
            momentum,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train && x.dim(0)? > 1 {
            let mean = x.mean_keepdim(0)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            let n = x.dim(0)? as f64;
            let m = self.momentum;
            let new_mean =
                ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.squeeze(0)?.detach() * m)?)?;
            let unbiased = (var.squeeze(0)?.detach() * (n / (n - 1.0)))?;
            let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().unsqueeze(0)?,
                self.running_var.as_tensor().unsqueeze(0)?,
            )
        };
        let xhat = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xhat.broadcast_mul(&self.gamma)?.broadcast_add(&self.beta)?)
    }

    /// Folds this (evaluation-mode) batch norm into the preceding linear layer: returns `(W', b')`
    /// with `BN(x W^T + b) = x W'^T + b'`.
    pub fn fold(&self, fc: &Linear) -> Result<(Tensor, Tensor)> {
        let scale = self
            .gamma
            .broadcast_div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let w = fc.weight.broadcast_mul(&scale.unsqueeze(1)?)?;
        let b = (fc.bias.sub(self.running_mean.as_tensor())? * &scale)?.add(&self.beta)?;
        Ok((w, b))
    }
}

fn leaky(x: &Tensor, slope: f64) -> Result<Tensor> {
    Ok(x.maximum(&(x * slope)?)?)
}

/// `FC -> BN -> LeakyReLU` for every layer but the last, which is a plain FC.
#[derive(Debug, Clone)]
pub struct Tower {
    pub fcs: Vec<Linear>,
    pub bns: Vec<BatchNorm>,
    slope: f64,
}

impl Tower {
    fn new(
        p: &mut Params,
        name: &str,
        inp: usize,
        widths: &[usize],
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let mut fcs = Vec::new();
        let mut bns = Vec::new();
        let mut prev = inp;
        for (i, &w) in widths.iter().enumerate() {
            fcs.push(Linear::new(p, &format!("{name}.{i}"), prev, w)?);
            if i + 1 < widths.len() {
                bns.push(BatchNorm::new(
                    p,
                    &format!("{name}.bn{i}"),
                    w,
                    cfg.bn_eps,
                    cfg.bn_momentum,
                )?);
            }
            prev = w;
        }
        Ok(Tower {
            fcs,
            bns,
            slope: cfg.leaky_relu_slope,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, fc) in self.fcs.iter().enumerate() {
            h = fc.forward(&h)?;
            if let Some(bn) = self.bns.get(i) {
                h = leaky(&bn.forward(&h, train)?, self.slope)?;
            }
        }
        Ok(h)
    }
}

/// `x / max(||x||_2, 1e-12)` row-wise.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xhat.broadcast_mul(gamma)?.broadcast_add(beta)?)
}

/// One layer of multi-head self-attention with FFN, residuals, layer norm, then masked mean pooling.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub ln1: (Tensor, Tensor),
    pub ln2: (Tensor, Tensor),
    pub ffn1: Linear,
    pub ffn2: Linear,
    heads: usize,
    eps: f64,
}

impl Encoder {
    fn new(p: &mut Params, name: &str, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.d_model();
        Ok(Encoder {
            q: Linear::new(p, &format!("{name}.q"), d, d)?,
            k: Linear::new(p, &format!("{name}.k"), d, d)?,
            v: Linear::new(p, &format!("{name}.v"), d, d)?,
            out: Linear::new(p, &format!("{name}.out"), d, d)?,
            ln1: (
                p.constant(format!("{name}.ln1.weight"), &[d], 1.0)?,
                p.constant(format!("{name}.ln1.bias"), &[d], 0.0)?,
            ),
            ln2: (
                p.constant(format!("{name}.ln2.weight"), &[d], 1.0)?,
                p.constant(format!("{name}.ln2.bias"), &[d], 0.0)?,
            ),
            ffn1: Linear::new(p, &format!("{name}.ffn1"), d, cfg.ffn_dim)?,
            ffn2: Linear::new(p, &format!("{name}.ffn2"), cfg.ffn_dim, d)?,
            heads: cfg.heads,
            eps: cfg.layer_norm_eps,
        })
    }

    /// `x: [B, L, d]`, `mask: [B, L]` (1 = real token) -> pooled `[B, d]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let h = self.heads;
        let dh = d / h;
        let x2 = x.reshape((b * l, d))?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.q.forward(&x2)?)?;
        let k = split(self.k.forward(&x2)?)?;
        let v = split(self.v.forward(&x2)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
        let mask_add = ((mask - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let attn = candle_nn::ops::softmax(&scores.broadcast_add(&mask_add)?, D::Minus1)?;
        let a = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * l, d))?;
        let a = self.out.forward(&a)?;
        let h1 = layer_norm(&(x2 + a)?, &self.ln1.0, &self.ln1.1, self.eps)?;
        let f = self.ffn2.forward(&self.ffn1.forward(&h1)?.relu()?)?;
        let h2 = layer_norm(&(h1 + f)?, &self.ln2.0, &self.ln2.1, self.eps)?;
        let h2 = h2.reshape((b, l, d))?;
        let summed = h2.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let count = mask.sum_keepdim(1)?.maximum(1.0)?;
        Ok(summed.broadcast_div(&count)?)
    }
}

/// The teacher network of a method.
#[derive(Debug, Clone)]
pub enum TeacherNet {
    /// An MLP producing one logit (LUPI, MD, PFD+MD).
    Mlp(Tower),
    /// An inner-product model (PFD): user tower over regular + privileged inputs, item tower.
    InnerProduct { user: Tower, item: Tower },
}

/// Teacher-only parameters.
#[derive(Debug, Clone)]
pub struct Teacher {
    pub user_id: Option<Tensor>,
    pub privileged: Vec<Tensor>,
    pub net: TeacherNet,
}

/// Student and teacher with their shared input components.
#[derive(Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub method: Method,
    pub params: Params,
    /// Shared user feature tables, by name (`user_id` is not shared: see `student_user_id`).
    pub user_emb: BTreeMap<String, Tensor>,
    /// Shared behaviour tables (item features then extras, spec order).
    pub behavior_emb: Vec<Tensor>,
    pub encoder: Encoder,
    pub student_user_id: Tensor,
    pub student_user: Tower,
    pub student_item: Tower,
    pub teacher: Option<Teacher>,
}

/// Outputs of one forward pass.
#[derive(Debug)]
pub struct Output {
    /// Student logits, `[N]` (one per impression).
    pub student: Tensor,
    /// Teacher logits, `[N]`, when the method has a teacher.
    pub teacher: Option<Tensor>,
    /// Student user vectors, `[B, d]` (one per request), L2-normalised.
    pub user_vectors: Tensor,
}

impl Model {
    pub fn new(cfg: ModelConfig, method: Method, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut p = Params::new(seed);
        let std = cfg.emb_init_std;
        let mut user_emb = BTreeMap::new();
        for f in &cfg.features.user {
            if f.name != "user_id" {
                let t = p.normal(
                    format!("shared.emb.user.{}", f.name),
                    &[f.rows(), f.dim],
                    std,
                )?;
                user_emb.insert(f.name.clone(), t);
            }
        }
        let uid = cfg
            .features
            .user
            .iter()
            .find(|f| f.name == "user_id")
            .cloned();
        let behavior_emb = cfg
            .features
            .behavior
            .item
            .iter()
            .chain(&cfg.features.behavior.extras)
            .map(|f| {
                p.normal(
                    format!("shared.emb.behavior.{}", f.name),
                    &[f.rows(), f.dim],
                    std,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let encoder = Encoder::new(&mut p, "shared.attn", &cfg)?;
        let (uid_rows, uid_dim) = uid.as_ref().map_or((1, 1), |f| (f.rows(), f.dim));
        let student_user_id =
            p.normal("student.emb.user.user_id".into(), &[uid_rows, uid_dim], std)?;
        let user_in = cfg.features.user_dim() + cfg.d_model();
        let student_user = Tower::new(
            &mut p,
            "student.user_tower",
            user_in,
            &cfg.tower_widths,
            &cfg,
        )?;
        let student_item = Tower::new(
            &mut p,
            "student.item_tower",
            cfg.item_input_dim(),
            &cfg.tower_widths,
            &cfg,
        )?;
        let teacher = if method.has_teacher() {
            let user_id = if method == Method::Lupi {
                None
            } else {
                Some(p.normal("teacher.emb.user.user_id".into(), &[uid_rows, uid_dim], std)?)
            };
            let privileged = if matches!(method, Method::Md) {
                Vec::new()
            } else {
                cfg.privileged
                    .iter()
                    .map(|f| {
                        p.normal(
                            format!("teacher.emb.priv.{}", f.name),
                            &[f.rows(), f.dim],
                            std,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            let regular_user = user_in;
            let item_in = cfg.item_input_dim();
            let priv_in = cfg.privileged_dim();
            let mut widths = cfg.teacher_widths.clone();
            widths.push(1);
            let net = match method {
                Method::Lupi => {
                    TeacherNet::Mlp(Tower::new(&mut p, "teacher.mlp", priv_in, &widths, &cfg)?)
                }
                Method::Md => TeacherNet::Mlp(Tower::new(
                    &mut p,
                    "teacher.mlp",
                    regular_user + item_in,
                    &widths,
                    &cfg,
                )?),
                Method::PfdMd => TeacherNet::Mlp(Tower::new(
                    &mut p,
                    "teacher.mlp",
                    regular_user + item_in + priv_in,
                    &widths,
                    &cfg,
                )?),
                Method::Pfd | Method::Baseline => TeacherNet::InnerProduct {
                    user: Tower::new(
                        &mut p,
                        "teacher.user_tower",
                        regular_user + priv_in,
                        &cfg.tower_widths,
                        &cfg,
                    )?,
                    item: Tower::new(
                        &mut p,
                        "teacher.item_tower",
                        item_in,
                        &cfg.tower_widths,
                        &cfg,
                    )?,
                },
            };
            Some(Teacher {
                user_id,
                privileged,
                net,
            })
        } else {
            None
        };
        Ok(Model {
            cfg,
            method,
            params: p,
            user_emb,
            behavior_emb,
            encoder,
            student_user_id,
            student_user,
            student_item,
            teacher,
        })
    }

    /// Embedding of one categorical column: `table[rows]`.
    fn lookup(table: &Tensor, rows: &Tensor) -> Result<Tensor> {
        Ok(table.index_select(rows, 0)?)
    }

    /// Pooled behaviour representation `p`, `[B, d_model]`.
    pub fn encode_behaviors(&self, batch: &Batch) -> Result<Tensor> {
        let (b, l) = batch.seq_shape;
        let parts = self
            .behavior_emb
            .iter()
            .zip(&batch.seq)
            .map(|(t, rows)| Self::lookup(t, rows))
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::cat(&parts, 1)?.reshape((b, l, self.cfg.d_model()))?;
        self.encoder.forward(&x, &batch.mask)
    }

    /// `[B, user_dim]`: user feature embeddings in spec order, with `user_id` from `uid_table`.
    fn user_features(&self, batch: &Batch, uid_table: &Tensor) -> Result<Tensor> {
        let parts = self
            .cfg
            .features
            .user
            .iter()
            .zip(&batch.user)
            .map(|(f, rows)| {
                let table = if f.name == "user_id" {
                    uid_table
                } else {
                    self.user_emb.get(&f.name).ok_or_else(|| {
                        TrainError::Config(format!(
                            "no embedding table for user feature {}",
                            f.name
                        ))
                    })?
                };
                Self::lookup(table, rows)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    fn item_inputs(&self, batch: &Batch) -> Result<Tensor> {
        let parts = batch
            .item_tables
            .iter()
            .zip(&batch.items)
            .map(|(&t, rows)| Self::lookup(&self.behavior_emb[t], rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Student user vectors from precomputed `p`: `[B, d]`, L2-normalised.
    pub fn student_user_vectors(
        &self,
        batch: &Batch,
        pooled: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let z0 = Tensor::cat(
            &[
                self.user_features(batch, &self.student_user_id)?,
                pooled.clone(),
            ],
            1,
        )?;
        l2_normalize(&self.student_user.forward(&z0, train)?)
    }

    /// Student item vectors for raw item-table rows: `[N, d]`, L2-normalised.
    pub fn student_item_vectors(&self, item_inputs: &Tensor, train: bool) -> Result<Tensor> {
        l2_normalize(&self.student_item.forward(item_inputs, train)?)
    }

    /// Item-tower input for a batch of items given per-table rows.
    pub fn item_inputs_from_rows(&self, tables: &[usize], rows: &[Tensor]) -> Result<Tensor> {
        let parts = tables
            .iter()
            .zip(rows)
            .map(|(&t, r)| Self::lookup(&self.behavior_emb[t], r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Output> {
        let pooled = self.encode_behaviors(batch)?;
        let u = self.student_user_vectors(batch, &pooled, train)?;
        let item_in = self.item_inputs(batch)?;
        let v = self.student_item_vectors(&item_in, train)?;
        let u_imp = u.index_select(&batch.imp_req, 0)?;
        let student = ((u_imp * &v)?.sum(1)? * self.cfg.tau)?;
        let teacher = match &self.teacher {
            None => None,
            Some(t) => Some(self.teacher_forward(t, batch, &pooled, &item_in, train)?),
        };
        Ok(Output {
            student,
            teacher,
            user_vectors: u,
        })
    }

    fn teacher_forward(
        &self,
        t: &Teacher,
        batch: &Batch,
        pooled: &Tensor,
        item_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let priv_in = if t.privileged.is_empty() {
            None
        } else {
            let parts = t
                .privileged
                .iter()
                .zip(&batch.privileged)
                .map(|(table, rows)| Self::lookup(table, rows))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 1)?)
        };
        let regular_user = match &t.user_id {
            Some(uid) => Some(
                Tensor::cat(&[self.user_features(batch, uid)?, pooled.clone()], 1)?
                    .index_select(&batch.imp_req, 0)?,
            ),
            None => None,
        };
        let need = |x: Option<Tensor>, what: &str| {
            x.ok_or_else(|| {
                TrainError::Config(format!("teacher of {} lacks {what}", self.method.name()))
            })
        };
        match (&t.net, self.method) {
            (TeacherNet::Mlp(mlp), Method::Lupi) => Ok(mlp
                .forward(&need(priv_in, "privileged")?, train)?
                .squeeze(1)?),
            (TeacherNet::Mlp(mlp), Method::Md) => {
                let x = Tensor::cat(&[need(regular_user, "user")?, item_in.clone()], 1)?;
                Ok(mlp.forward(&x, train)?.squeeze(1)?)
            }
            (TeacherNet::Mlp(mlp), _) => {
                let x = Tensor::cat(
                    &[
                        need(regular_user, "user")?,
                        item_in.clone(),
                        need(priv_in, "privileged")?,
                    ],
                    1,
                )?;
                Ok(mlp.forward(&x, train)?.squeeze(1)?)
            }
            (TeacherNet::InnerProduct { user, item }, _) => {
                let x = Tensor::cat(
                    &[need(regular_user, "user")?, need(priv_in, "privileged")?],
                    1,
                )?;
                let tu = l2_normalize(&user.forward(&x, train)?)?;
                let tv = l2_normalize(&item.forward(item_in, train)?)?;
                Ok(((tu * tv)?.sum(1)? * self.cfg.tau)?)
            }
        }
    }
}

/// Mean binary cross-entropy with logits, `targets` in [0, 1] (hard labels or teacher probabilities).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // softplus(x) - x*y, with softplus(x) = relu(x) + log(1 + exp(-|x|)).
    let softplus = (logits.relu()? + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    Ok((softplus - (logits * targets)?)?.mean_all()?)
}

/// The training objective of Eq. (5): student log-loss + `lambda` * cross-entropy to the teacher's
/// (detached) soft label + teacher log-loss. Returns `(total, student, distill, teacher)`.
pub fn pfd_loss(
    out: &Output,
    labels: &Tensor,
    lambda: f64,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let student = bce_with_logits(&out.student, labels)?;
    match &out.teacher {
        None => {
            let zero = Tensor::zeros((), DType::F32, &Device::Cpu)?;
            Ok((student.clone(), student, zero.clone(), zero))
        }
        Some(t) => {
            let teacher = bce_with_logits(t, labels)?;
            let soft = candle_nn::ops::sigmoid(&t.detach())?;
            let distill = bce_with_logits(&out.student, &soft)?;
            let total = ((&student + (&distill * lambda)?)? + &teacher)?;
            Ok((total, student, distill, teacher))
        }
    }
}
