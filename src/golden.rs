//! Golden checks, and [`Snapshot::load`] (open + golden replay) which runs them.
//!
//! A manifest's golden checks (docs/snapshot-format.md section 9) are sample `POST /v1/rank` JSON
//! bodies with the user vector and top scores the producer's own forward pass gave. Loading replays
//! each one through this crate's tower and scoring: its request is decoded by the API's JSON decoder
//! ([`crate::api`], the same code a client's request goes through), the user vector is compared
//! component by component, and the top items are ranked against the f32 rows with the exact kernel.
//! A check that does not hold within its tolerance rejects the snapshot.
//!
//! This module sits above [`crate::snapshot`] (which knows only the domain request) and the JSON
//! adapter: it is the one place where loading a snapshot meets the wire format. The decoded requests
//! are kept in the snapshot as the default warm-up ([`Snapshot::warm_up`]).

use std::path::Path;
use std::time::Instant;

use prerank_format::manifest::GoldenCheck;
use prerank_format::Dtype;

use crate::api;
use crate::model::UserInput;
use crate::parallel::ScoringPool;
use crate::request::RankRequest;
use crate::scoring::{Kernel, Scratch};
use crate::snapshot::{max_abs_diff, LoadOptions, Snapshot, SnapshotError, Target};

impl Snapshot {
    /// Opens, verifies and golden-checks the version directory `dir` (with `opts.golden`).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Snapshot, SnapshotError> {
        let started = Instant::now();
        let mut snap = Snapshot::open(dir, opts)?;
        let opened_ms = started.elapsed().as_millis() as u64;
        let requests: Vec<Result<RankRequest, String>> =
            snap.manifest().golden.iter().map(decode).collect();
        if opts.golden {
            check(&snap, &requests)?;
        }
        let samples = requests.into_iter().filter_map(Result::ok).collect();
        snap.finish_load(samples, started, opened_ms, opts);
        Ok(snap)
    }
}

/// The domain request of one golden check (`Err`: why its JSON does not decode).
fn decode(g: &GoldenCheck) -> Result<RankRequest, String> {
    serde_json::from_value::<api::RankRequest>(g.request.clone())
        .map(api::RankRequest::into_domain)
        .map_err(|e| e.to_string())
}

/// Replays every golden check: user vector and top scores within the check's tolerance.
fn check(snap: &Snapshot, requests: &[Result<RankRequest, String>]) -> Result<(), SnapshotError> {
    // Golden requests are small (a few hundred candidates): the sequential pool ranks them.
    let pool = ScoringPool::sequential();
    let mut scratch = Scratch::default();
    let manifest = snap.manifest();
    // Top scores are defined against f32 vectors; with only compact dtypes stored, check the
    // scores at that dtype's precision instead.
    let f32_rows = snap
        .files()
        .vectors
        .iter()
        .position(|v| v.dtype() == Dtype::F32);
    let target = Target {
        vectors: f32_rows.unwrap_or(0),
        kernel: Kernel::Exact,
    };
    for (g, req) in manifest.golden.iter().zip(requests) {
        let fail = |reason: String| SnapshotError::Golden {
            name: g.name.clone(),
            reason,
        };
        let req = req
            .as_ref()
            .map_err(|e| fail(format!("request does not parse: {e}")))?;
        let input = UserInput::new(&req.user).map_err(|e| fail(e.to_string()))?;
        let u = snap.user_vector(&input).map_err(|e| fail(e.to_string()))?;
        let (worst, at) = max_abs_diff(&u, &g.user_vector);
        if worst > g.tolerance {
            return Err(fail(format!(
                "user vector differs by {worst:e} at component {at} (tolerance {:e})",
                g.tolerance
            )));
        }
        let tol = match f32_rows {
            Some(_) => g.tolerance,
            None => g.tolerance + manifest.tau * 0.05,
        };
        let k = req.k_or_zero().max(g.top.len());
        let req = RankRequest {
            k: i64::try_from(k).unwrap_or(i64::MAX),
            ..req.clone()
        };
        let got = snap
            .rank_on(&req, target, &pool, &mut scratch)
            .map_err(|e| fail(e.to_string()))?;
        if got.items.len() < g.top.len() {
            return Err(fail(format!(
                "expected {} items, got {}",
                g.top.len(),
                got.items.len()
            )));
        }
        for (i, want) in g.top.iter().enumerate() {
            let have = got.items[i];
            if (have.score - want.score).abs() > tol {
                return Err(fail(format!(
                    "rank {i}: score {} for item {}, expected {} for item {} (tolerance {tol:e})",
                    have.score, have.item_id, want.score, want.item_id
                )));
            }
            // Ids must match unless the expected neighbours tie within the tolerance.
            let tied = g
                .top
                .iter()
                .any(|o| o.item_id != want.item_id && (o.score - want.score).abs() <= 2.0 * tol);
            if have.item_id != want.item_id && !tied {
                return Err(fail(format!(
                    "rank {i}: item {}, expected item {}",
                    have.item_id, want.item_id
                )));
            }
        }
    }
    Ok(())
}
