//! Encoding logs into embedding-row indices, and building batches of whole requests.
//!
//! Raw values are mapped to rows with `prerank_format::features` (the same mapping the service
//! uses). A batch is a set of requests: the user side (user features, behaviour sequence) is encoded
//! once per request and broadcast to its impressions with `imp_req`, which is exactly the serving
//! shape (one user mapping per request, one inner product per candidate).
//!
//! Invariant: sequences are truncated to `features.behavior.max_len` (first entries = most recent),
//! padded to the longest sequence of the batch, and `mask` marks the real tokens.

use candle_core::{Device, Tensor};
use prerank_format::features::{FeatureSpec, RawValue};

use crate::error::DataError;
use crate::logs::{Behavior, Request, PRIVILEGED};
use crate::model::ModelConfig;

/// A log encoded as embedding rows.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub n_user: usize,
    pub n_token: usize,
    pub n_item: usize,
    pub n_priv: usize,
    /// `[R * n_user]`
    pub user_rows: Vec<u32>,
    /// `[R + 1]` offsets into `seq_rows` (in tokens).
    pub seq_offsets: Vec<usize>,
    /// `[T * n_token]`
    pub seq_rows: Vec<u32>,
    /// `[R + 1]` offsets into the impression arrays.
    pub imp_offsets: Vec<usize>,
    /// `[I * n_item]`
    pub item_rows: Vec<u32>,
    /// `[I * n_priv]`
    pub priv_rows: Vec<u32>,
    /// `[I]`
    pub labels: Vec<f32>,
}

impl Encoded {
    pub fn requests(&self) -> usize {
        self.imp_offsets.len().saturating_sub(1)
    }

    pub fn impressions(&self) -> usize {
        self.labels.len()
    }
}

fn row(spec: &FeatureSpec, value: RawValue<'_>) -> Result<u32, DataError> {
    spec.row(value)
        .map(|r| r as u32)
        .map_err(|source| DataError::Feature {
            feature: spec.name.clone(),
            source,
        })
}

/// Raw value of a user feature of a request, by feature name.
pub fn user_value<'a>(r: &'a Request, name: &str) -> Result<RawValue<'a>, DataError> {
    Ok(match name {
        "user_id" => RawValue::UInt(r.user_id),
        "age" => r.user_age.map_or(RawValue::Missing, RawValue::Int),
        "gender" => r
            .user_gender
            .as_deref()
            .map_or(RawValue::Missing, RawValue::Str),
        "purchase_level" => r
            .user_purchase_level
            .map_or(RawValue::Missing, RawValue::Int),
        other => {
            return Err(DataError::Schema(format!(
                "user feature {other:?} has no column in the log schema"
            )))
        }
    })
}

/// Raw value of a behaviour item feature or extra, by feature name.
pub fn behavior_value<'a>(b: &'a Behavior, name: &str) -> Result<RawValue<'a>, DataError> {
    Ok(match name {
        "item_id" => RawValue::UInt(b.item_id),
        "category" => RawValue::UInt(b.category),
        "shop" => RawValue::UInt(b.shop),
        "brand" => RawValue::UInt(b.brand),
        "action" => RawValue::Str(&b.action),
        "seconds_ago" => RawValue::Float(b.seconds_ago),
        "dwell_seconds" => RawValue::Float(b.dwell_seconds),
        other => {
            return Err(DataError::Schema(format!(
                "behaviour feature {other:?} has no column in the log schema"
            )))
        }
    })
}

/// Raw value of a candidate item feature (item_id, category, shop, brand).
pub fn item_value(
    item_id: u64,
    category: u64,
    shop: u64,
    brand: u64,
    name: &str,
) -> Result<RawValue<'static>, DataError> {
    Ok(match name {
        "item_id" => RawValue::UInt(item_id),
        "category" => RawValue::UInt(category),
        "shop" => RawValue::UInt(shop),
        "brand" => RawValue::UInt(brand),
        other => {
            return Err(DataError::Schema(format!(
                "item feature {other:?} has no column in the log schema"
            )))
        }
    })
}

/// Encodes `requests` with the model's feature configuration.
pub fn encode<'a>(
    cfg: &ModelConfig,
    requests: impl IntoIterator<Item = &'a Request>,
) -> Result<Encoded, DataError> {
    let fs = &cfg.features;
    let token_specs: Vec<&FeatureSpec> =
        fs.behavior.item.iter().chain(&fs.behavior.extras).collect();
    let item_specs: Vec<&FeatureSpec> = cfg
        .item_features
        .iter()
        .map(|n| {
            fs.behavior
                .item
                .iter()
                .find(|f| &f.name == n)
                .ok_or_else(|| DataError::Schema(format!("unknown item feature {n:?}")))
        })
        .collect::<Result<_, _>>()?;
    let priv_index: Vec<usize> = cfg
        .privileged
        .iter()
        .map(|f| {
            PRIVILEGED.iter().position(|n| *n == f.name).ok_or_else(|| {
                DataError::Schema(format!("unknown privileged feature {:?}", f.name))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut e = Encoded {
        n_user: fs.user.len(),
        n_token: token_specs.len(),
        n_item: item_specs.len(),
        n_priv: cfg.privileged.len(),
        seq_offsets: vec![0],
        imp_offsets: vec![0],
        ..Encoded::default()
    };
    for r in requests {
        for f in &fs.user {
            e.user_rows.push(row(f, user_value(r, &f.name)?)?);
        }
        for b in r.behaviors.iter().take(fs.behavior.max_len) {
            for f in &token_specs {
                e.seq_rows.push(row(f, behavior_value(b, &f.name)?)?);
            }
        }
        e.seq_offsets.push(e.seq_rows.len() / e.n_token.max(1));
        for s in &r.shown {
            for f in &item_specs {
                e.item_rows.push(row(
                    f,
                    item_value(
                        s.item_id,
                        s.item_category,
                        s.item_shop,
                        s.item_brand,
                        &f.name,
                    )?,
                )?);
            }
            for (f, &k) in cfg.privileged.iter().zip(&priv_index) {
                e.priv_rows
                    .push(row(f, RawValue::Int(i64::from(s.privileged[k])))?);
            }
            e.labels.push(f32::from(s.label));
        }
        e.imp_offsets.push(e.labels.len());
    }
    Ok(e)
}

/// Tensors of one batch of requests.
#[derive(Debug)]
pub struct Batch {
    /// One `[B]` row tensor per user feature (spec order).
    pub user: Vec<Tensor>,
    /// One `[B * L]` row tensor per token feature (item features then extras).
    pub seq: Vec<Tensor>,
    /// `(B, L)`.
    pub seq_shape: (usize, usize),
    /// `[B, L]`, 1.0 for real tokens.
    pub mask: Tensor,
    /// `[N]`: the batch request of each impression.
    pub imp_req: Tensor,
    /// Behaviour-table index of each item feature (into `Model::behavior_emb`).
    pub item_tables: Vec<usize>,
    /// One `[N]` row tensor per item feature.
    pub items: Vec<Tensor>,
    /// One `[N]` row tensor per privileged feature.
    pub privileged: Vec<Tensor>,
    /// `[N]` click labels.
    pub labels: Tensor,
}

/// Builds the batch of the given request indices.
pub fn make_batch(cfg: &ModelConfig, e: &Encoded, reqs: &[usize]) -> candle_core::Result<Batch> {
    let dev = Device::Cpu;
    let b = reqs.len();
    let l = reqs
        .iter()
        .map(|&r| e.seq_offsets[r + 1] - e.seq_offsets[r])
        .max()
        .unwrap_or(0)
        .max(1);
    let mut user = vec![Vec::with_capacity(b); e.n_user];
    let mut seq = vec![vec![0u32; b * l]; e.n_token];
    let mut mask = vec![0f32; b * l];
    let mut imp_req = Vec::new();
    let mut items = vec![Vec::new(); e.n_item];
    let mut privileged = vec![Vec::new(); e.n_priv];
    let mut labels = Vec::new();
    for (i, &r) in reqs.iter().enumerate() {
        for (f, col) in user.iter_mut().enumerate() {
            col.push(e.user_rows[r * e.n_user + f]);
        }
        let (s0, s1) = (e.seq_offsets[r], e.seq_offsets[r + 1]);
        for (j, t) in (s0..s1).enumerate() {
            mask[i * l + j] = 1.0;
            for (f, col) in seq.iter_mut().enumerate() {
                col[i * l + j] = e.seq_rows[t * e.n_token + f];
            }
        }
        for k in e.imp_offsets[r]..e.imp_offsets[r + 1] {
            imp_req.push(i as u32);
            for (f, col) in items.iter_mut().enumerate() {
                col.push(e.item_rows[k * e.n_item + f]);
            }
            for (f, col) in privileged.iter_mut().enumerate() {
                col.push(e.priv_rows[k * e.n_priv + f]);
            }
            labels.push(e.labels[k]);
        }
    }
    let t = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), &dev);
    let item_tables = cfg
        .item_features
        .iter()
        .map(|n| {
            cfg.features
                .behavior
                .item
                .iter()
                .position(|f| &f.name == n)
                .unwrap_or(0)
        })
        .collect();
    let n = labels.len();
    Ok(Batch {
        user: user.into_iter().map(t).collect::<Result<_, _>>()?,
        seq: seq.into_iter().map(t).collect::<Result<_, _>>()?,
        seq_shape: (b, l),
        mask: Tensor::from_vec(mask, (b, l), &dev)?,
        imp_req: t(imp_req)?,
        item_tables,
        items: items.into_iter().map(t).collect::<Result<_, _>>()?,
        privileged: privileged.into_iter().map(t).collect::<Result<_, _>>()?,
        labels: Tensor::from_vec(labels, n, &dev)?,
    })
}
