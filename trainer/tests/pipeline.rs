//! End-to-end tests of the trainer on the CI-sized synthetic log with the tiny architecture:
//! training smoke runs of every method, gradient isolation of the distillation loss, batch-norm
//! folding against an independent plain-Rust implementation of the contract's user tower, and the
//! parity test against the service crate (`prerank`): golden checks, user vectors, scores and AUC.

use std::collections::BTreeMap;

use prerank_format::features::RawValue;
use prerank_trainer::dataset::{behavior_value, encode, make_batch, user_value, Encoded};
use prerank_trainer::export::{export, request_json, student_tensors, user_vector, ExportOptions};
use prerank_trainer::logs::{Logs, Request};
use prerank_trainer::metrics::auc;
use prerank_trainer::model::{bce_with_logits, pfd_loss, Method, Model, ModelConfig};
use prerank_trainer::synth::{generate, SynthConfig};
use prerank_trainer::train::{encode_splits, predict, split, train, TrainConfig};

fn ci_logs() -> Logs {
    generate(&SynthConfig::preset("ci", 11).expect("ci preset"))
}

fn tiny() -> ModelConfig {
    ModelConfig::tiny(12)
}

fn quick(method: Method, steps: usize) -> TrainConfig {
    TrainConfig {
        batch_requests: 16,
        lr: 0.1,
        warmup_steps: 3,
        swap_step: steps / 2,
        max_steps: Some(steps),
        log_every: 5,
        ..TrainConfig::new(method, 5)
    }
}

fn trained(method: Method, steps: usize) -> (Logs, Model, Encoded, Encoded) {
    let logs = ci_logs();
    let cfg = tiny();
    let (tr, te) = encode_splits(&cfg, &logs).expect("encode");
    let model = Model::new(cfg, method, 5).expect("model");
    train(&model, &quick(method, steps), &tr, &te).expect("train");
    (logs, model, tr, te)
}

#[test]
fn every_method_trains_and_evaluates() {
    let logs = ci_logs();
    let cfg = tiny();
    let (tr, te) = encode_splits(&cfg, &logs).expect("encode");
    for method in Method::ALL {
        let model = Model::new(cfg.clone(), method, 3).expect("model");
        let report = train(&model, &quick(method, 12), &tr, &te).expect("train");
        assert_eq!(report.steps, 12);
        assert!(report.log.iter().all(|r| r.loss.is_finite()), "{method:?}");
        assert!((0.0..=1.0).contains(&report.eval.student_auc));
        assert_eq!(
            report.eval.teacher_auc.is_some(),
            method.has_teacher(),
            "{method:?}"
        );
        // lambda is 0 before the swap step and the configured value after it.
        assert!(report
            .log
            .iter()
            .all(|r| (r.step <= 6) == (r.lambda == 0.0)));
    }
}

/// The distillation term must not move any teacher-only parameter, but must reach the student.
#[test]
fn distillation_loss_sends_no_gradient_to_the_teacher() {
    let logs = ci_logs();
    let cfg = tiny();
    let (tr, _) = encode_splits(&cfg, &logs).expect("encode");
    let reqs: Vec<usize> = (0..16).collect();
    let batch = make_batch(&cfg, &tr, &reqs).expect("batch");
    for method in [Method::Lupi, Method::Md, Method::Pfd, Method::PfdMd] {
        let model = Model::new(cfg.clone(), method, 9).expect("model");
        let out = model.forward(&batch, true).expect("forward");
        let teacher_logits = out.teacher.as_ref().expect("teacher");
        let soft = candle_nn::ops::sigmoid(&teacher_logits.detach()).expect("sigmoid");
        let distill = bce_with_logits(&out.student, &soft).expect("distill");
        let grads = distill.backward().expect("backward");
        let teacher_vars = model.params.group("teacher.");
        assert!(!teacher_vars.is_empty());
        for (name, var) in &teacher_vars {
            if let Some(g) = grads.get(var) {
                let m = g
                    .abs()
                    .and_then(|a| a.max_all())
                    .and_then(|m| m.to_scalar::<f32>())
                    .expect("max");
                assert_eq!(m, 0.0, "{method:?}: distillation gradient reached {name}");
            }
        }
        let student_grad = grads
            .get(&model.params.vars["student.user_tower.2.weight"])
            .expect("student gets a gradient");
        let m = student_grad
            .abs()
            .and_then(|a| a.max_all())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("max");
        assert!(m > 0.0);
        // Whereas the full objective does train the teacher.
        let (total, ..) = pfd_loss(&out, &batch.labels, 0.5).expect("loss");
        let grads = total.backward().expect("backward");
        let any_teacher = teacher_vars.iter().any(|(_, v)| {
            grads.get(v).is_some_and(|g| {
                g.abs()
                    .and_then(|a| a.max_all())
                    .and_then(|m| m.to_scalar::<f32>())
                    .expect("max")
                    > 0.0
            })
        });
        assert!(
            any_teacher,
            "{method:?}: the teacher log-loss must train the teacher"
        );
    }
}

// ---- an independent, plain-Rust implementation of docs/snapshot-format.md section 4 ----

struct Ref<'a> {
    t: &'a BTreeMap<String, prerank_format::Tensor>,
    cfg: &'a ModelConfig,
}

impl Ref<'_> {
    fn get(&self, name: &str) -> &prerank_format::Tensor {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("missing tensor {name}"))
    }

    fn emb(&self, name: &str, row: usize) -> Vec<f32> {
        let t = self.get(name);
        let dim = t.shape[1];
        t.data[row * dim..(row + 1) * dim].to_vec()
    }

    fn linear(&self, name: &str, x: &[f32]) -> Vec<f32> {
        let w = self.get(&format!("{name}.weight"));
        let b = self.get(&format!("{name}.bias"));
        let (out, inp) = (w.shape[0], w.shape[1]);
        assert_eq!(inp, x.len(), "{name}");
        (0..out)
            .map(|o| b.data[o] + (0..inp).map(|i| w.data[o * inp + i] * x[i]).sum::<f32>())
            .collect()
    }

    fn layer_norm(&self, name: &str, x: &[f32]) -> Vec<f32> {
        let g = &self.get(&format!("{name}.weight")).data;
        let b = &self.get(&format!("{name}.bias")).data;
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.cfg.layer_norm_eps as f32).sqrt();
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) * inv * g[i] + b[i])
            .collect()
    }

    fn user_vector(&self, r: &Request) -> Vec<f32> {
        let fs = &self.cfg.features;
        let mut z0 = Vec::new();
        for f in &fs.user {
            let row = f.row(user_value(r, &f.name).expect("value")).expect("row");
            z0.extend(self.emb(&format!("emb.user.{}", f.name), row));
        }
        let d = self.cfg.d_model();
        let tokens: Vec<Vec<f32>> = r
            .behaviors
            .iter()
            .take(fs.behavior.max_len)
            .map(|b| {
                let mut tok = Vec::new();
                for f in fs.behavior.item.iter().chain(&fs.behavior.extras) {
                    let v: RawValue<'_> = behavior_value(b, &f.name).expect("value");
                    tok.extend(
                        self.emb(&format!("emb.behavior.{}", f.name), f.row(v).expect("row")),
                    );
                }
                tok
            })
            .collect();
        let n = tokens.len();
        let mut pooled = vec![0f32; d];
        if n > 0 {
            let q: Vec<Vec<f32>> = tokens.iter().map(|x| self.linear("attn.q", x)).collect();
            let k: Vec<Vec<f32>> = tokens.iter().map(|x| self.linear("attn.k", x)).collect();
            let v: Vec<Vec<f32>> = tokens.iter().map(|x| self.linear("attn.v", x)).collect();
            let h = self.cfg.heads;
            let dh = d / h;
            for (i, x) in tokens.iter().enumerate() {
                let mut a = vec![0f32; d];
                for head in 0..h {
                    let cols = head * dh..(head + 1) * dh;
                    let s: Vec<f32> = (0..n)
                        .map(|j| {
                            cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f32>()
                                / (dh as f32).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for c in cols.clone() {
                        a[c] = (0..n).map(|j| e[j] / z * v[j][c]).sum();
                    }
                }
                let a = self.linear("attn.out", &a);
                let r1: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
                let h1 = self.layer_norm("attn.ln1", &r1);
                let f1: Vec<f32> = self
                    .linear("attn.ffn1", &h1)
                    .into_iter()
                    .map(|x| x.max(0.0))
                    .collect();
                let f2 = self.linear("attn.ffn2", &f1);
                let r2: Vec<f32> = h1.iter().zip(&f2).map(|(p, q)| p + q).collect();
                let h2 = self.layer_norm("attn.ln2", &r2);
                for c in 0..d {
                    pooled[c] += h2[c] / n as f32;
                }
            }
        }
        z0.extend(pooled);
        let slope = self.cfg.leaky_relu_slope as f32;
        let leaky = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter()
                .map(|x| if x >= 0.0 { x } else { slope * x })
                .collect()
        };
        let z1 = leaky(self.linear("tower.0", &z0));
        let z2 = leaky(self.linear("tower.1", &z1));
        let z3 = self.linear("tower.2", &z2);
        let norm = z3.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        z3.iter().map(|x| x / norm).collect()
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Folded tensors + the contract computation = the training graph in evaluation mode.
#[test]
fn batch_norm_folding_matches_the_training_graph() {
    let (logs, model, ..) = trained(Method::PfdMd, 15);
    // Running statistics must be non-trivial for the test to mean something.
    let rv = model.student_user.bns[0]
        .running_var
        .as_tensor()
        .to_vec1::<f32>()
        .expect("vec");
    assert!(rv.iter().any(|v| (v - 1.0).abs() > 1e-3));
    let tensors = student_tensors(&model).expect("tensors");
    let reference = Ref {
        t: &tensors,
        cfg: &model.cfg,
    };
    let (_, held_out) = split(&logs);
    let mut cold = held_out[0].clone();
    cold.behaviors.clear();
    cold.user_age = None;
    for r in held_out
        .iter()
        .take(8)
        .copied()
        .chain(std::iter::once(&cold))
    {
        let ours = user_vector(&model, r).expect("trainer forward");
        let theirs = reference.user_vector(r);
        let err = max_abs(&ours, &theirs);
        assert!(err <= 1e-5, "request {}: max abs err {err}", r.request_id);
    }
}

/// Padding inside a batch changes nothing: batched user vectors equal one-request forwards.
#[test]
fn batching_and_padding_do_not_change_user_vectors() {
    let (logs, model, ..) = trained(Method::Baseline, 5);
    let (_, held_out) = split(&logs);
    let reqs: Vec<&Request> = held_out.iter().take(10).copied().collect();
    let enc = encode(&model.cfg, reqs.iter().copied()).expect("encode");
    let idx: Vec<usize> = (0..reqs.len()).collect();
    let batch = make_batch(&model.cfg, &enc, &idx).expect("batch");
    let out = model.forward(&batch, false).expect("forward");
    let batched: Vec<Vec<f32>> = out.user_vectors.to_vec2::<f32>().expect("vec2");
    for (r, b) in reqs.iter().zip(&batched) {
        let single = user_vector(&model, r).expect("single");
        assert!(max_abs(&single, b) <= 1e-5);
    }
}

/// The contract between training and serving: export, load with the service, compare.
#[test]
fn parity_with_the_service() {
    let (logs, model, _, te) = trained(Method::PfdMd, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("pfd-student").join("1");
    let (_, held_out) = split(&logs);
    let opts = ExportOptions {
        model_name: "pfd-student".into(),
        version: 1,
        dtypes: vec![prerank_format::Dtype::F32, prerank_format::Dtype::Int8],
        golden: 3,
        provenance: serde_json::json!({"test": true}),
    };
    let manifest = export(&model, &logs.items, &held_out, &opts, &dest).expect("export");
    assert_eq!(manifest.items.count as usize, logs.items.len());
    assert_eq!(manifest.golden.len(), 4);

    // Loading replays the golden checks (trainer forward vs service forward).
    let snap = prerank::snapshot::Snapshot::load(&dest, &prerank::snapshot::LoadOptions::default())
        .expect("the service loads and verifies the export");

    // User vectors and scores for every held-out request; AUC over all held-out impressions.
    let preds = predict(&model, &te).expect("predict");
    let (trainer_logits, labels) = (preds.student, preds.labels);
    let mut service_scores = Vec::with_capacity(trainer_logits.len());
    let mut scratch = prerank::scoring::Scratch::default();
    let pool = prerank::parallel::ScoringPool::sequential();
    let mut worst_u = 0f32;
    let mut worst_s = 0f32;
    let mut k = 0;
    for r in &held_out {
        let cands: Vec<u64> = r.shown.iter().map(|s| s.item_id).collect();
        let body = request_json(r, &cands, cands.len(), false);
        let req = serde_json::from_value::<prerank::api::RankRequest>(body)
            .expect("request parses")
            .into_domain();
        let input = prerank::model::UserInput::new(&req.user).expect("input");
        let u_service = snap.user_vector(&input).expect("service forward");
        let u_trainer = user_vector(&model, r).expect("trainer forward");
        worst_u = worst_u.max(max_abs(&u_service, &u_trainer));
        let ranked = snap.rank(&req, &pool, &mut scratch).expect("rank");
        let by_id: BTreeMap<u64, f32> = ranked.items.iter().map(|s| (s.item_id, s.score)).collect();
        for s in &r.shown {
            let score = by_id[&s.item_id];
            worst_s = worst_s.max((score - trainer_logits[k]).abs());
            service_scores.push(score);
            k += 1;
        }
    }
    assert_eq!(k, trainer_logits.len());
    assert!(worst_u <= 1e-4, "user vectors differ by {worst_u}");
    assert!(worst_s <= 1e-4, "scores differ by {worst_s}");
    let a_trainer = auc(&trainer_logits, &labels).expect("auc");
    let a_service = auc(&service_scores, &labels).expect("auc");
    assert!(
        (a_trainer - a_service).abs() <= 1e-3,
        "AUC {a_trainer} vs {a_service}"
    );
}
