//! Deterministic synthetic snapshots: randomly initialised students of the real architecture over a
//! synthetic item corpus, for tests, benchmarks (10^6..10^7 items) and as a placeholder model.
//!
//! Item vectors are clustered by category (a unit centroid per category plus noise, normalised), so
//! rankings have realistic structure. The golden checks are computed by this crate's own forward pass,
//! so for a synthetic snapshot they test determinism and file integrity, not trainer/server parity;
//! the provenance says so. Same seed, same bytes (apart from `created_at`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use prerank_format::features::{BehaviorSpec, FeatureSet, FeatureSpec};
use prerank_format::manifest::{Architecture, GoldenCheck, GoldenItem, ARCH_KIND};
use prerank_format::{write_snapshot, Dtype, Manifest, SnapshotParts, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api::RankRequest;
use crate::model::UserInput;
use crate::parallel::ScoringPool;
use crate::scoring::Scratch;
use crate::snapshot::{LoadOptions, Snapshot, SnapshotError};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub model: String,
    pub version: u64,
    pub items: usize,
    pub seed: u64,
    pub dtypes: Vec<Dtype>,
    /// Number of golden checks to embed.
    pub golden: usize,
    pub categories: u64,
    pub tower_widths: [usize; 3],
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            model: "pfd-student".into(),
            version: 1,
            items: 20_000,
            seed: 7,
            dtypes: vec![Dtype::F32],
            golden: 3,
            categories: 200,
            tower_widths: [512, 256, 128],
        }
    }
}

/// The feature set of the synthetic (and default) student: paper-shaped, sized for a small repo.
pub fn default_features(items: usize, categories: u64) -> FeatureSet {
    FeatureSet {
        user: vec![
            FeatureSpec::hashed("user_id", 10_000, 16),
            FeatureSpec::bucketized("age", &[18.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0], 4),
            FeatureSpec::hashed("gender", 3, 4),
            FeatureSpec::hashed("city_tier", 6, 4),
        ],
        behavior: BehaviorSpec {
            max_len: 50,
            item: vec![
                FeatureSpec::hashed("item_id", (items as u64).clamp(16, 20_000), 24),
                FeatureSpec::hashed("category", categories.max(1) * 2, 12),
                FeatureSpec::hashed("shop", 2_000, 12),
                FeatureSpec::hashed("brand", 1_000, 8),
            ],
            extras: vec![
                FeatureSpec::hashed("action", 8, 4),
                FeatureSpec::bucketized(
                    "seconds_ago",
                    &[60.0, 600.0, 3_600.0, 21_600.0, 86_400.0, 604_800.0],
                    2,
                ),
                FeatureSpec::bucketized("dwell_seconds", &[2.0, 5.0, 15.0, 60.0, 180.0], 2),
            ],
        },
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Writes a synthetic snapshot to `dest` (which must not exist) and returns its manifest.
pub fn generate(dest: &Path, cfg: &SynthConfig) -> Result<Manifest, SnapshotError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let features = default_features(cfg.items, cfg.categories);
    let d_model = features.token_dim();
    let architecture = Architecture {
        kind: ARCH_KIND.into(),
        d_model,
        heads: 4,
        ffn_dim: 2 * d_model,
        ffn_activation: "relu".into(),
        layer_norm_eps: 1e-5,
        tower_widths: cfg.tower_widths.to_vec(),
        leaky_relu_slope: 0.01,
    };
    let dim = cfg.tower_widths[2];

    // Items: unique random ids, attributes, category-clustered unit vectors.
    let mut seen = HashSet::with_capacity(cfg.items);
    let mut item_ids = Vec::with_capacity(cfg.items);
    while item_ids.len() < cfg.items {
        let id = rng.gen_range(1_000_000u64..1_000_000_000_000);
        if seen.insert(id) {
            item_ids.push(id);
        }
    }
    let centroids: Vec<Vec<f32>> = (0..cfg.categories.max(1))
        .map(|_| {
            let mut c = uniform(&mut rng, dim, 1.0);
            normalise(&mut c);
            c
        })
        .collect();
    let mut item_vectors = Vec::with_capacity(cfg.items * dim);
    let mut item_attributes = Vec::with_capacity(cfg.items * 3);
    for _ in 0..cfg.items {
        let cat = rng.gen_range(0..cfg.categories.max(1));
        let shop = rng.gen_range(0..5_000u64);
        let brand = rng.gen_range(0..2_000u64);
        item_attributes.extend_from_slice(&[cat, shop, brand]);
        let mut v: Vec<f32> = centroids[cat as usize]
            .iter()
            .map(|c| c + rng.gen_range(-0.08f32..0.08))
            .collect();
        normalise(&mut v);
        item_vectors.extend_from_slice(&v);
    }

    // Weights of the documented architecture, in the documented names and shapes.
    let mut tensors = BTreeMap::new();
    let placeholder = Manifest {
        format_version: prerank_format::FORMAT_VERSION,
        model: cfg.model.clone(),
        version: cfg.version,
        created_at: String::new(),
        tau: 5.0,
        features: features.clone(),
        architecture: architecture.clone(),
        items: prerank_format::ItemsSpec {
            count: cfg.items as u64,
            dim,
            vectors: vec![],
            index_file: String::new(),
            attributes_file: String::new(),
            attributes: vec![],
        },
        weights_file: String::new(),
        files: BTreeMap::new(),
        provenance: serde_json::Value::Null,
        golden: vec![],
    };
    for (name, shape) in placeholder.expected_tensors() {
        let n: usize = shape.iter().product();
        let data = if name.starts_with("emb.") {
            uniform(&mut rng, n, 0.5)
        } else if name.ends_with(".weight") && name.contains(".ln") {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.1f32..0.1)).collect()
        } else if name.ends_with(".bias") {
            uniform(&mut rng, n, 0.05)
        } else {
            let fan_in = shape[1] as f32;
            uniform(&mut rng, n, (6.0 / fan_in).sqrt())
        };
        tensors.insert(name, Tensor { shape, data });
    }

    let mut parts = SnapshotParts {
        model: cfg.model.clone(),
        version: cfg.version,
        created_at: None,
        tau: 5.0,
        features,
        architecture,
        provenance: serde_json::json!({
            "producer": format!("prerank synth {}", env!("CARGO_PKG_VERSION")),
            "method": "random-init placeholder (not trained)",
            "seed": cfg.seed,
            "notes": "Synthetic snapshot: randomly initialised student over a synthetic, category-clustered \
                      item corpus. Golden checks were computed by prerank's own forward pass, so they check \
                      determinism and integrity, not trainer/server parity.",
        }),
        golden: vec![],
        tensors,
        item_ids,
        item_vectors,
        attribute_names: vec!["category".into(), "shop".into(), "brand".into()],
        item_attributes,
        dtypes: cfg.dtypes.clone(),
    };
    if cfg.golden > 0 {
        parts.golden = golden_checks(dest, &parts, cfg, &mut rng)?;
    }
    Ok(write_snapshot(dest, &parts)?)
}

/// A sample request over the snapshot's items (shared with tests and the load generators), with
/// 0..60 behaviours.
pub fn sample_request(
    rng: &mut impl Rng,
    item_ids: &[u64],
    candidates: usize,
    k: i64,
) -> RankRequest {
    let behaviors = rng.gen_range(0..60usize);
    sample_request_sized(rng, item_ids, candidates, behaviors, k)
}

/// [`sample_request`] with exactly `behaviors` behaviours (load-test bodies, decode benchmarks):
/// behaviour and candidate ids are drawn from `item_ids`, profile features as in the golden checks.
pub fn sample_request_sized(
    rng: &mut impl Rng,
    item_ids: &[u64],
    candidates: usize,
    behaviors: usize,
    k: i64,
) -> RankRequest {
    let behaviors = (0..behaviors)
        .map(|_| {
            let item_id = *item_ids.choose(rng).unwrap_or(&0);
            let mut fields = BTreeMap::new();
            fields.insert(
                "action".to_string(),
                serde_json::json!(["click", "cart", "buy", "fav"][rng.gen_range(0..4)]),
            );
            fields.insert(
                "seconds_ago".to_string(),
                serde_json::json!(rng.gen_range(0..1_000_000u64)),
            );
            fields.insert(
                "dwell_seconds".to_string(),
                serde_json::json!(rng.gen_range(0.0..300.0f64)),
            );
            crate::api::BehaviorJson { item_id, fields }
        })
        .collect();
    let mut features = BTreeMap::new();
    features.insert("age".to_string(), serde_json::json!(rng.gen_range(14..80)));
    features.insert(
        "gender".to_string(),
        serde_json::json!(["f", "m"][rng.gen_range(0..2)]),
    );
    features.insert(
        "city_tier".to_string(),
        serde_json::json!(rng.gen_range(1..6)),
    );
    RankRequest {
        request_id: None,
        user: crate::api::UserJson {
            id: Some(serde_json::json!(rng.gen_range(1..5_000_000u64))),
            features,
            behaviors,
        },
        candidates: (0..candidates)
            .map(|_| *item_ids.choose(rng).unwrap_or(&0))
            .collect(),
        k,
        model: None,
        with_probability: false,
        bucket: None,
    }
}

fn golden_checks(
    dest: &Path,
    parts: &SnapshotParts,
    cfg: &SynthConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<GoldenCheck>, SnapshotError> {
    // Write once without golden checks to a hidden staging directory, run our forward pass on it.
    let staging: PathBuf = dest.with_file_name(format!(
        ".synth-staging-{}-{}",
        std::process::id(),
        cfg.version
    ));
    let _ = std::fs::remove_dir_all(&staging);
    write_snapshot(&staging, parts)?;
    let result = (|| {
        let snap = Snapshot::load(
            &staging,
            &LoadOptions {
                dtype: Some(Dtype::F32).filter(|_| cfg.dtypes.contains(&Dtype::F32)),
                verify: false,
                huge_pages: false,
                golden: false,
                load_mode: prerank_format::reader::LoadMode::Mmap,
                ..LoadOptions::default()
            },
        )?;
        let mut scratch = Scratch::default();
        let pool = ScoringPool::sequential();
        let mut checks = Vec::new();
        for i in 0..cfg.golden {
            let mut req = sample_request(rng, &parts.item_ids, 200.min(parts.item_ids.len()), 10);
            req.candidates.push(1); // an id that is never in a synthetic corpus (ids are >= 10^6)
            let domain = req.clone().into_domain();
            let input = UserInput::new(&domain.user)?;
            let user_vector = snap.user_vector(&input)?;
            let ranked = snap.rank(&domain, &pool, &mut scratch)?;
            checks.push(GoldenCheck {
                name: format!("synthetic-{i}"),
                request: serde_json::to_value(&req).unwrap_or_default(),
                user_vector,
                top: ranked
                    .items
                    .iter()
                    .map(|s| GoldenItem {
                        item_id: s.item_id,
                        score: s.score,
                    })
                    .collect(),
                tolerance: 1e-4,
            });
        }
        Ok(checks)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
