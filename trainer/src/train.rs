//! Synchronous teacher-student training (Algorithm 1 / Eq. (5) of the paper) and next-day evaluation.
//!
//! One optimizer step minimises `L_s(y, f_s) + lambda_t * CE(sigmoid(f_t).detach(), f_s) + L_t(y, f_t)`
//! over all parameters, where `lambda_t = 0` before `swap_step` and `lambda` after. Because the
//! teacher's output is detached in the distillation term, the teacher's own parameters only receive
//! the gradient of its log-loss; the shared input components receive all three terms.
//!
//! A run directory holds `config.json`, `model.safetensors` (parameters and batch-norm statistics),
//! `log.csv` / `log.json` (losses every `log_every` steps, AUC per epoch) and `metrics.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{encode, make_batch, Encoded};
use crate::error::TrainError;
use crate::logs::{Logs, Request};
use crate::metrics::{auc, logloss};
use crate::model::{pfd_loss, Method, Model, ModelConfig};
use crate::optim::{Adagrad, AdagradConfig};

type Result<T> = std::result::Result<T, TrainError>;

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    pub epochs: usize,
    /// Requests per batch (each request contributes all its impressions).
    pub batch_requests: usize,
    /// Adagrad learning rate after warm-up.
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup_steps: usize,
    /// Weight of the distillation loss after the swap step.
    pub lambda: f64,
    /// Step from which `lambda` is used (0 before).
    pub swap_step: usize,
    /// Stop after this many steps (for tests and smoke runs).
    pub max_steps: Option<usize>,
    /// Average losses over this many steps per log row.
    pub log_every: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl TrainConfig {
    pub fn new(method: Method, seed: u64) -> Self {
        TrainConfig {
            method,
            seed,
            epochs: 1,
            batch_requests: 64,
            lr: 0.2,
            warmup_steps: 200,
            lambda: 0.5,
            swap_step: 400,
            max_steps: None,
            log_every: 50,
            progress: false,
        }
    }
}

/// Held-out evaluation of student and teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub impressions: usize,
    pub student_auc: f64,
    pub student_logloss: f64,
    pub teacher_auc: Option<f64>,
    pub teacher_logloss: Option<f64>,
}

/// One row of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub lambda: f64,
    pub loss: f64,
    pub student_loss: f64,
    pub distill_loss: f64,
    pub teacher_loss: f64,
    pub eval_student_auc: Option<f64>,
    pub eval_teacher_auc: Option<f64>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub method: Method,
    pub seed: u64,
    pub steps: usize,
    pub train_seconds: f64,
    pub train_impressions: usize,
    pub eval: Eval,
    pub log: Vec<LogRow>,
}

/// Splits requests into training days and the held-out last day.
pub fn split(logs: &Logs) -> (Vec<&Request>, Vec<&Request>) {
    let last = logs.last_day();
    logs.requests.iter().partition(|r| r.day < last)
}

/// Evaluates student and teacher on `data` (eval mode: batch norm uses running statistics).
pub fn evaluate(model: &Model, data: &Encoded) -> Result<Eval> {
    let Predictions {
        student,
        teacher,
        labels,
    } = predict(model, data)?;
    let student_auc = auc(&student, &labels)
        .ok_or(crate::error::DataError::Empty("held-out (one class only)"))?;
    let teacher_auc = match &teacher {
        Some(t) => auc(t, &labels),
        None => None,
    };
    Ok(Eval {
        impressions: labels.len(),
        student_auc,
        student_logloss: logloss(&student, &labels),
        teacher_auc,
        teacher_logloss: teacher.as_ref().map(|t| logloss(t, &labels)),
    })
}

/// Logits for every impression of an encoded data set, in order.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub student: Vec<f32>,
    /// `None` for the baseline.
    pub teacher: Option<Vec<f32>>,
    pub labels: Vec<f32>,
}

/// Student and teacher logits (evaluation mode) and labels for every impression of `data`.
pub fn predict(model: &Model, data: &Encoded) -> Result<Predictions> {
    let mut student = Vec::with_capacity(data.impressions());
    let mut teacher = model
        .teacher
        .as_ref()
        .map(|_| Vec::with_capacity(data.impressions()));
    let reqs: Vec<usize> = (0..data.requests()).collect();
    for chunk in reqs.chunks(256) {
        let batch = make_batch(&model.cfg, data, chunk)?;
        let out = model.forward(&batch, false)?;
        student.extend(out.student.detach().to_vec1::<f32>()?);
        if let (Some(acc), Some(t)) = (teacher.as_mut(), out.teacher) {
            acc.extend(t.detach().to_vec1::<f32>()?);
        }
    }
    Ok(Predictions {
        student,
        teacher,
        labels: data.labels.clone(),
    })
}

/// Trains `model` on `train` and evaluates on `test` after every epoch.
pub fn train(
    model: &Model,
    cfg: &TrainConfig,
    train: &Encoded,
    test: &Encoded,
) -> Result<TrainReport> {
    let start = Instant::now();
    let opt_cfg = AdagradConfig {
        lr: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        ..AdagradConfig::default()
    };
    let vars = model.params.vars.values().cloned().collect();
    let mut opt = Adagrad::new(vars, opt_cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.requests()).collect();
    let steps_per_epoch = order.len().div_ceil(cfg.batch_requests.max(1));
    let total = cfg
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * cfg.epochs);
    let bar = if cfg.progress {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(cfg.method.name().to_string());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut log = Vec::new();
    let mut acc = [0.0f64; 4];
    let mut acc_n = 0usize;
    let mut step = 0usize;
    let mut eval = None;
    'epochs: for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch_requests.max(1)) {
            if step >= total {
                break 'epochs;
            }
            let batch = make_batch(&model.cfg, train, chunk)?;
            let out = model.forward(&batch, true)?;
            let lambda = if step >= cfg.swap_step {
                cfg.lambda
            } else {
                0.0
            };
            let (loss, ls, ld, lt) = pfd_loss(&out, &batch.labels, lambda)?;
            let lr = opt.learning_rate();
            opt.backward_step(&loss)?;
            let values = [
                loss.to_scalar::<f32>()?,
                ls.to_scalar::<f32>()?,
                ld.to_scalar::<f32>()?,
                lt.to_scalar::<f32>()?,
            ];
            if !values[0].is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    loss: values[0],
                });
            }
            for (a, v) in acc.iter_mut().zip(values) {
                *a += f64::from(v);
            }
            acc_n += 1;
            step += 1;
            bar.inc(1);
            if step.is_multiple_of(cfg.log_every.max(1)) || step == total {
                let n = acc_n.max(1) as f64;
                bar.set_message(format!("loss {:.4}", acc[0] / n));
                log.push(LogRow {
                    step,
                    epoch,
                    lr,
                    lambda,
                    loss: acc[0] / n,
                    student_loss: acc[1] / n,
                    distill_loss: acc[2] / n,
                    teacher_loss: acc[3] / n,
                    eval_student_auc: None,
                    eval_teacher_auc: None,
                });
                acc = [0.0; 4];
                acc_n = 0;
            }
        }
        let e = evaluate(model, test)?;
        if let Some(row) = log.last_mut() {
            row.eval_student_auc = Some(e.student_auc);
            row.eval_teacher_auc = e.teacher_auc;
        }
        eval = Some(e);
    }
    bar.finish_and_clear();
    let eval = match eval {
        Some(e) => e,
        None => evaluate(model, test)?,
    };
    if let Some(row) = log.last_mut() {
        row.eval_student_auc = Some(eval.student_auc);
        row.eval_teacher_auc = eval.teacher_auc;
    }
    Ok(TrainReport {
        method: cfg.method,
        seed: cfg.seed,
        steps: step,
        train_seconds: start.elapsed().as_secs_f64(),
        train_impressions: train.impressions(),
        eval,
        log,
    })
}

/// What `config.json` of a run directory holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    pub model: ModelConfig,
    /// Description of the training data (the data directory's `data.json`).
    pub data: serde_json::Value,
}

/// Writes a run directory.
pub fn save_run(dir: &Path, run: &RunConfig, model: &Model, report: &TrainReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))
    };
    write("config.json", serde_json::to_string_pretty(run)?)?;
    let tensors: HashMap<String, Tensor> = model.params.tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    write("log.json", serde_json::to_string_pretty(&report.log)?)?;
    let mut csv = String::from("step,epoch,lr,lambda,loss,student_loss,distill_loss,teacher_loss,eval_student_auc,eval_teacher_auc\n");
    for r in &report.log {
        let opt = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{:.6},{},{:.6},{:.6},{:.6},{:.6},{},{}\n",
            r.step,
            r.epoch,
            r.lr,
            r.lambda,
            r.loss,
            r.student_loss,
            r.distill_loss,
            r.teacher_loss,
            opt(r.eval_student_auc),
            opt(r.eval_teacher_auc)
        ));
    }
    write("log.csv", csv)?;
    let metrics = serde_json::json!({
        "method": report.method,
        "seed": report.seed,
        "steps": report.steps,
        "train_seconds": report.train_seconds,
        "train_impressions": report.train_impressions,
        "eval": report.eval,
    });
    write("metrics.json", serde_json::to_string_pretty(&metrics)?)?;
    Ok(())
}

/// Loads a run directory: its configuration, the model with trained weights, and its metrics.
pub fn load_run(dir: &Path) -> Result<(RunConfig, Model, serde_json::Value)> {
    let read = |name: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))
    };
    let run: RunConfig = serde_json::from_str(&read("config.json")?)?;
    let model = Model::new(run.model.clone(), run.train.method, run.train.seed)?;
    let tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?
            .into_iter()
            .collect();
    model.params.load(&tensors)?;
    let metrics = serde_json::from_str(&read("metrics.json")?)?;
    Ok((run, model, metrics))
}

/// Encodes the train and held-out splits of `logs` for `cfg`.
pub fn encode_splits(cfg: &ModelConfig, logs: &Logs) -> Result<(Encoded, Encoded)> {
    let (train_reqs, test_reqs) = split(logs);
    if train_reqs.is_empty() {
        return Err(crate::error::DataError::Empty("training").into());
    }
    if test_reqs.is_empty() {
        return Err(crate::error::DataError::Empty("held-out").into());
    }
    Ok((encode(cfg, train_reqs)?, encode(cfg, test_reqs)?))
}
