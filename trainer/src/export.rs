//! Export of the trained student as a prerank snapshot (`docs/snapshot-format.md`).
//!
//! - The student user tower's batch norms are folded into `tower.0` / `tower.1`
//!   (`W' = diag(gamma / sqrt(var + eps)) W`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`).
//! - Tensors are renamed from the training graph to the contract's names; the student's own user-id
//!   table becomes `emb.user.user_id`, the shared tables and encoder keep their role.
//! - The student item tower runs over the whole item corpus; vectors are L2-normalised.
//! - Golden checks are computed by the trainer's own candle forward pass in evaluation mode (with the
//!   unfolded batch norms), so they also check the folding and the service's re-implementation.
//! - `prerank_format::write_snapshot` writes the version directory atomically.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use prerank_format::manifest::{Architecture, GoldenCheck, GoldenItem, ARCH_KIND};
use prerank_format::{write_snapshot, Dtype, Manifest, SnapshotParts};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::{encode, item_value, make_batch};
use crate::error::ExportError;
use crate::logs::{Item, Request};
use crate::model::Model;

type Result<T> = std::result::Result<T, ExportError>;

/// Attribute columns written to `items.attr` (behaviour items given by id are looked up there).
pub const ATTRIBUTES: [&str; 3] = ["category", "shop", "brand"];

/// Tensor name mapping from the training graph to the snapshot contract (without the tower).
fn contract_name(train_name: &str) -> Option<String> {
    if train_name == "student.emb.user.user_id" {
        return Some("emb.user.user_id".into());
    }
    if let Some(rest) = train_name.strip_prefix("shared.") {
        if rest.starts_with("emb.") || rest.starts_with("attn.") {
            return Some(rest.to_string());
        }
    }
    None
}

fn to_format(t: &Tensor) -> Result<prerank_format::Tensor> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(prerank_format::Tensor { shape, data })
}

/// The student user tower's tensors under the contract's names, batch norm folded.
pub fn student_tensors(model: &Model) -> Result<BTreeMap<String, prerank_format::Tensor>> {
    let mut out = BTreeMap::new();
    for (name, var) in &model.params.vars {
        if let Some(c) = contract_name(name) {
            out.insert(c, to_format(var.as_tensor())?);
        }
    }
    let tower = &model.student_user;
    if tower.fcs.len() != 3 || tower.bns.len() != 2 {
        return Err(ExportError::Invalid(
            "student user tower must have 3 layers".into(),
        ));
    }
    for i in 0..2 {
        let (w, b) = tower.bns[i].fold(&tower.fcs[i])?;
        out.insert(format!("tower.{i}.weight"), to_format(&w)?);
        out.insert(format!("tower.{i}.bias"), to_format(&b)?);
    }
    out.insert("tower.2.weight".into(), to_format(&tower.fcs[2].weight)?);
    out.insert("tower.2.bias".into(), to_format(&tower.fcs[2].bias)?);
    Ok(out)
}

/// The manifest `architecture` block of a model.
pub fn architecture(model: &Model) -> Architecture {
    let c = &model.cfg;
    Architecture {
        kind: ARCH_KIND.into(),
        d_model: c.d_model(),
        heads: c.heads,
        ffn_dim: c.ffn_dim,
        ffn_activation: "relu".into(),
        layer_norm_eps: c.layer_norm_eps as f32,
        tower_widths: c.tower_widths.clone(),
        leaky_relu_slope: c.leaky_relu_slope as f32,
    }
}

/// Student item vectors for every item of `items`, row-major `[count * dim]`, L2-normalised.
pub fn item_vectors(model: &Model, items: &[Item]) -> Result<Vec<f32>> {
    let cfg = &model.cfg;
    let specs: Vec<(usize, &prerank_format::FeatureSpec)> = cfg
        .item_features
        .iter()
        .map(|n| {
            cfg.features
                .behavior
                .item
                .iter()
                .enumerate()
                .find(|(_, f)| &f.name == n)
                .ok_or_else(|| ExportError::Invalid(format!("unknown item feature {n}")))
        })
        .collect::<Result<_>>()?;
    let tables: Vec<usize> = specs.iter().map(|(i, _)| *i).collect();
    let mut out = Vec::with_capacity(items.len() * cfg.tower_widths[2]);
    for chunk in items.chunks(4096) {
        let mut rows = vec![Vec::with_capacity(chunk.len()); specs.len()];
        for it in chunk {
            for (k, (_, f)) in specs.iter().enumerate() {
                let v = item_value(it.item_id, it.category, it.shop, it.brand, &f.name)?;
                let r = f
                    .row(v)
                    .map_err(|source| crate::error::DataError::Feature {
                        feature: f.name.clone(),
                        source,
                    })?;
                rows[k].push(r as u32);
            }
        }
        let rows = rows
            .into_iter()
            .map(|r| Tensor::from_vec(r.clone(), r.len(), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let input = model
            .item_inputs_from_rows(&tables, &rows)
            .map_err(ExportError::Train)?;
        let v = model
            .student_item_vectors(&input, false)
            .map_err(ExportError::Train)?;
        out.extend(v.flatten_all()?.to_vec1::<f32>()?);
    }
    // Renormalise in f64 so that every stored row has norm 1 to f32 precision.
    let dim = cfg.tower_widths[2];
    for row in out.chunks_exact_mut(dim) {
        let n = row
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        if n > 0.0 {
            for x in row.iter_mut() {
                *x = (f64::from(*x) / n) as f32;
            }
        }
    }
    Ok(out)
}

/// The service-API request body for a logged request (behaviours by id, attributes looked up by the
/// service), with the given candidates and k.
pub fn request_json(
    r: &Request,
    candidates: &[u64],
    k: usize,
    with_attributes: bool,
) -> serde_json::Value {
    let mut features = serde_json::Map::new();
    if let Some(a) = r.user_age {
        features.insert("age".into(), a.into());
    }
    if let Some(g) = &r.user_gender {
        features.insert("gender".into(), g.clone().into());
    }
    if let Some(p) = r.user_purchase_level {
        features.insert("purchase_level".into(), p.into());
    }
    let behaviors: Vec<serde_json::Value> = r
        .behaviors
        .iter()
        .map(|b| {
            let mut o = serde_json::json!({
                "item_id": b.item_id,
                "action": b.action,
                "seconds_ago": b.seconds_ago,
                "dwell_seconds": b.dwell_seconds,
            });
            if with_attributes {
                o["category"] = b.category.into();
                o["shop"] = b.shop.into();
                o["brand"] = b.brand.into();
            }
            o
        })
        .collect();
    serde_json::json!({
        "user": {"id": r.user_id, "features": features, "behaviors": behaviors},
        "candidates": candidates,
        "k": k,
    })
}

/// User vector of one request by the trainer's forward pass (evaluation mode).
pub fn user_vector(model: &Model, r: &Request) -> Result<Vec<f32>> {
    let mut one = r.clone();
    if one.shown.is_empty() {
        return Err(ExportError::Invalid("request without impressions".into()));
    }
    one.shown.truncate(1);
    let enc = encode(&model.cfg, [&one])?;
    let batch = make_batch(&model.cfg, &enc, &[0])?;
    let pooled = model.encode_behaviors(&batch).map_err(ExportError::Train)?;
    let u = model
        .student_user_vectors(&batch, &pooled, false)
        .map_err(ExportError::Train)?;
    Ok(u.flatten_all()?.to_vec1::<f32>()?)
}

/// Golden checks for a few held-out requests: expected user vector and top-k scores.
pub fn golden_checks(
    model: &Model,
    samples: &[&Request],
    items: &[Item],
    vectors: &[f32],
    seed: u64,
) -> Result<Vec<GoldenCheck>> {
    let dim = model.cfg.tower_widths[2];
    let row_of: BTreeMap<u64, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.item_id, i))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (n, r) in samples.iter().enumerate() {
        let u = user_vector(model, r)?;
        // Candidates: the shown items plus random corpus items, and one unknown id.
        let mut cands: Vec<u64> = r.shown.iter().map(|s| s.item_id).collect();
        let extra: Vec<u64> = items
            .choose_multiple(&mut rng, 40)
            .map(|i| i.item_id)
            .collect();
        for id in extra {
            if !cands.contains(&id) {
                cands.push(id);
            }
        }
        let mut scored: Vec<(u64, f32)> = cands
            .iter()
            .filter_map(|id| row_of.get(id).map(|&row| (*id, row)))
            .map(|(id, row)| {
                let v = &vectors[row * dim..(row + 1) * dim];
                let dot: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
                (id, model.cfg.tau as f32 * dot)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let k = 10;
        let top = scored
            .iter()
            .take(k)
            .map(|&(item_id, score)| GoldenItem { item_id, score })
            .collect();
        let with_attributes = n % 2 == 1;
        out.push(GoldenCheck {
            name: format!(
                "held-out request {} ({} behaviours{})",
                r.request_id,
                r.behaviors.len().min(model.cfg.features.behavior.max_len),
                if with_attributes {
                    ", attributes inline"
                } else {
                    ""
                }
            ),
            request: request_json(r, &cands, k, with_attributes),
            user_vector: u,
            top,
            tolerance: 1e-4,
        });
    }
    Ok(out)
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub model_name: String,
    pub version: u64,
    pub dtypes: Vec<Dtype>,
    /// Number of golden checks (held-out requests; one more with no behaviours is added).
    pub golden: usize,
    /// Free-form provenance added to the trainer's own.
    pub provenance: serde_json::Value,
}

/// Builds the snapshot parts of a trained model.
pub fn snapshot_parts(
    model: &Model,
    items: &[Item],
    held_out: &[&Request],
    opts: &ExportOptions,
) -> Result<SnapshotParts> {
    let tensors = student_tensors(model)?;
    let vectors = item_vectors(model, items)?;
    // Golden samples: the first held-out requests with behaviours, plus one without any behaviour
    // and without profile features.
    let mut samples: Vec<Request> = held_out
        .iter()
        .filter(|r| !r.behaviors.is_empty() && !r.shown.is_empty())
        .take(opts.golden)
        .map(|r| (*r).clone())
        .collect();
    if let Some(r) = held_out.iter().find(|r| !r.shown.is_empty()) {
        let mut cold = (*r).clone();
        cold.behaviors.clear();
        cold.user_age = None;
        cold.user_gender = None;
        cold.user_purchase_level = None;
        samples.push(cold);
    }
    let sample_refs: Vec<&Request> = samples.iter().collect();
    let golden = golden_checks(model, &sample_refs, items, &vectors, opts.version)?;
    let mut provenance = serde_json::json!({
        "producer": format!("prerank-trainer {}", env!("CARGO_PKG_VERSION")),
        "method": model.method.name(),
    });
    if let (Some(dst), Some(src)) = (provenance.as_object_mut(), opts.provenance.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    Ok(SnapshotParts {
        model: opts.model_name.clone(),
        version: opts.version,
        created_at: None,
        tau: model.cfg.tau as f32,
        features: model.cfg.features.clone(),
        architecture: architecture(model),
        provenance,
        golden,
        tensors,
        item_ids: items.iter().map(|i| i.item_id).collect(),
        item_vectors: vectors,
        attribute_names: ATTRIBUTES.map(String::from).to_vec(),
        item_attributes: items
            .iter()
            .flat_map(|i| [i.category, i.shop, i.brand])
            .collect(),
        dtypes: opts.dtypes.clone(),
    })
}

/// Exports `model` to the version directory `dest` (which must not exist).
pub fn export(
    model: &Model,
    items: &[Item],
    held_out: &[&Request],
    opts: &ExportOptions,
    dest: &Path,
) -> Result<Manifest> {
    let parts = snapshot_parts(model, items, held_out, opts)?;
    Ok(write_snapshot(dest, &parts)?)
}
