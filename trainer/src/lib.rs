//! # prerank-trainer: the reference trainer of prerank
//!
//! Trains the models of *Privileged Features Distillation at Taobao Recommendations* (KDD 2020) on
//! impression logs with privileged (interacted) features, evaluates them on the next day, and exports
//! the distilled student as a prerank snapshot. It depends on the snapshot format crate
//! (`prerank-format`) and never on the server.
//!
//! Map of the crate, from data to snapshot:
//! - [`synth`]: a seeded synthetic Taobao-like log generator (documented in `docs/synthetic-data.md`).
//! - [`logs`]: the impression-log types and their Parquet schema (arrow-rs).
//! - [`dataset`]: raw values -> embedding rows (with `prerank_format::features`), request batches.
//! - [`model`]: shared input components, the inner-product student and the five teachers (candle).
//! - [`optim`]: Adagrad with linear learning-rate warm-up.
//! - [`train`]: synchronous teacher-student training (Eq. 5), evaluation, run directories.
//! - [`metrics`]: exact tie-aware AUC, log-loss.
//! - [`export`]: batch-norm folding, item tower over the corpus, golden checks, snapshot writing.
//! - [`experiments`]: the Table-2 reproduction (runs, markdown, PNG plot) and the cost comparison.
//! - [`error`]: one error enum per layer.

pub mod dataset;
pub mod error;
pub mod experiments;
pub mod export;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod synth;
pub mod train;
