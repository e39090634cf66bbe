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
//! - [`proto`]: the protobuf encoding of the same wire types (prost, generated from `proto/`), decoded
//!   into the [`api`] types so validation is shared.
//! - [`model`]: the student user tower in ndarray (pure, sync, no I/O).
//! - [`scoring`]: id lookup, SIMD dot products per dtype, top-k (pure, sync).
//! - [`parallel`]: one large request split across a small scoring pool when cores are idle
//!   (adaptive; identical results to the sequential path).
//! - [`hugepages`]: THP mode and per-file resident / huge-page bytes from `/proc/self/smaps`.
//! - [`snapshot`]: a loaded, verified snapshot (golden checks replayed) and its `rank` entry point.
//! - [`buckets`]: A/B bucket plan: salted-hash assignment of users, overrides, container pin (pure).
//! - [`registry`]: the model repository (version policies, completeness, verified loading and warm-up)
//!   and the live snapshots behind one `ArcSwap`; status per version; lifecycle operations, including
//!   taking out of service a version whose deferred (background) verification fails.
//! - [`publish`]: `prerank publish`: verify, copy to a temp directory, fsync, atomic rename.
//! - [`watch`]: discovery of new versions (file watcher + polling fallback; tokio); also drives the
//!   registry's release of replaced snapshots and its deferred-verification reports.
//! - [`http`]: the axum routers (ranking API and admin API), handlers and the error -> status mapping.
//! - [`server`]: configuration, [`server::run`] (ranking listener and optional admin listener).
//! - [`telemetry`]: metric names (recorded from any layer through the `metrics` facade), the
//!   Prometheus recorder, logging set-up.
//! - [`synth`]: deterministic synthetic snapshots (tests, benchmarks, placeholder model).
//!
//! `main.rs` is a thin CLI over these: `serve`, `publish`, `inspect`, `validate`, `synth`, `probe`,
//! `bodies` (load-test request bodies in JSON and protobuf).

pub mod api;
pub mod buckets;
pub mod golden;
pub mod http;
pub mod hugepages;
pub mod model;
pub mod parallel;
pub mod proto;
pub mod publish;
pub mod registry;
pub mod request;
pub mod scoring;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod synth;
pub mod telemetry;
pub mod watch;

pub use prerank_format as format;
