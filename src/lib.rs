//! # prerank: coarse ranking for distilled two-tower recommenders
//!
//! A frontend POSTs one user (features + behaviour sequence) and up to ~10^5 candidate item ids;
//! prerank computes one user vector with the distilled student's user tower, scores every candidate by
//! `tau * <u, v>` against memory-mapped, L2-normalised item vectors, and returns the top-k.
//!
//! The layering runs one way, from bytes to HTTP (each layer only uses those above it in this list):
//!
//! - `prerank_format` (workspace crate): snapshot format v1, readers and the atomic writer; the only
//!   `unsafe` (mmap) lives in its `mmap` module.
//! - [`api`]: the JSON wire types (plain serde data), shared by HTTP, golden checks and load tests.
//! - [`model`]: the student user tower in ndarray (pure, sync, no I/O).
//! - [`scoring`]: id lookup, SIMD dot products per dtype, top-k (pure, sync).
//! - [`snapshot`]: a loaded, verified snapshot (golden checks replayed) and its `rank` entry point.
//! - [`registry`]: live snapshots per model behind `ArcSwap`, load status per version.
//! - [`server`]: configuration, model loading/polling, [`server::run`].
//! - [`http`]: the axum router, handlers and the error -> status mapping.
//! - [`telemetry`]: metric names, Prometheus recorder, logging set-up.
//! - [`synth`]: deterministic synthetic snapshots (tests, benchmarks, placeholder model).
//!
//! `main.rs` is a thin CLI over these: `serve`, `inspect`, `validate`, `synth`.

pub mod api;
pub mod http;
pub mod model;
pub mod registry;
pub mod scoring;
pub mod server;
pub mod snapshot;
pub mod synth;
pub mod telemetry;

pub use prerank_format as format;
