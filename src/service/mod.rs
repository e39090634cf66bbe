//! The ranking service: everything between "a request was decoded" and "a response can be encoded",
//! for every protocol.
//!
//! A protocol adapter (HTTP JSON or protobuf today, gRPC next) does only this:
//!
//! 1. [`RankService::admit`]: take an in-flight permit, or fail at once with
//!    [`RankError::Overloaded`] (shedding happens before the body is read or decoded);
//! 2. read and decode the body into the domain [`RankRequest`], within [`RankService::deadline`];
//! 3. [`RankService::rank`] with the permit, the request and a [`RequestContext`] (arrival time,
//!    transport request id, transport-level bucket override);
//! 4. encode the [`RankOutcome`], or map the [`RankError`] to its status with one exhaustive match.
//!
//! [`RankService::rank`] validates the request against the limits (once, on the domain type), routes
//! it to an A/B bucket, takes one `Arc<Snapshot>` of the bucket's model and version for the whole
//! request, and runs the pipeline ([`Snapshot::rank`]) on the blocking pool with this thread's
//! scratch buffers and the injected scoring pool, within the deadline. Past the deadline the caller
//! gets [`RankError::Timeout`] at once; the blocking task finishes in the background and keeps its
//! permit, so the bound on CPU work holds. Stage timings (decode, tower, scoring) and the request's
//! labels (bucket, model, version) are recorded here; the adapter records encode and its request
//! counters with the returned [`Labels`].
//!
//! Tokio-aware (semaphore, `spawn_blocking`, timers), protocol-neutral: no axum, no tonic.

mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prerank_format::Dtype;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::RankError;

use crate::buckets::{user_key_of, Buckets, BUCKET_HEADER};
use crate::parallel::ScoringPool;
use crate::registry::{Registry, RegistryError};
use crate::request::{Limits, RankRequest};
use crate::scoring::{with_thread_scratch, RankStats, Scored};
use crate::snapshot::Snapshot;
use crate::telemetry::{self, Labels};

/// Longest request id kept (client-supplied ids are cut to this many characters).
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A fresh request id: 32 random hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The id a response carries: the body's `request_id` when given (cut to 128 characters), else the
/// transport's (header or generated).
pub fn response_request_id(body: Option<&str>, transport: &str) -> String {
    match body.filter(|s| !s.is_empty()) {
        Some(id) => id.chars().take(MAX_REQUEST_ID_CHARS).collect(),
        None => transport.to_string(),
    }
}

/// Everything a ranking request needs besides the request itself (cheap to clone: shared handles).
#[derive(Debug, Clone)]
pub struct RankService {
    registry: Arc<Registry>,
    buckets: Arc<Buckets>,
    scoring: Arc<ScoringPool>,
    limits: Limits,
    /// Permits for requests in flight (`limits.max_inflight`); see [`RankService::admit`].
    inflight: Arc<Semaphore>,
    /// Deadline of one request from its arrival (`None`: no deadline).
    request_timeout: Option<Duration>,
}

/// The right to compute one request (held until its blocking work ends).
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// A bucket override given by the transport (the `x-prerank-bucket` header or gRPC metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketHint<'a> {
    None,
    Given(&'a str),
    /// Present but not visible ASCII text: refused with `invalid_request` at the routing step.
    Unreadable,
}

/// What the transport knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// Arrival: the deadline and the decode stage run from here.
    pub started: Instant,
    /// The transport's request id (header or generated); the body's id wins.
    pub request_id: &'a str,
    pub bucket_hint: BucketHint<'a>,
}

/// A ranked request, ready to encode.
#[derive(Debug, Clone)]
pub struct RankOutcome {
    pub request_id: String,
    /// The A/B bucket that served it.
    pub bucket: String,
    pub model: String,
    pub version: u64,
    /// Top-k by descending score (ties: ascending item id).
    pub items: Vec<Scored>,
    /// The client asked for `sigmoid(score)` per item.
    pub with_probability: bool,
    /// Candidates in the request.
    pub candidates: usize,
    pub stats: RankStats,
    pub ignored_features: Vec<String>,
    /// The item dtype the scores were computed with.
    pub dtype: Dtype,
    /// Time from arrival to the end of scoring, microseconds.
    pub took_us: u64,
}

/// The result of [`RankService::rank`] and the labels its metrics carry (filled as far as the
/// request got: bucket after routing, model and version once a snapshot was chosen).
#[derive(Debug)]
pub struct Handled {
    pub result: Result<RankOutcome, RankError>,
    pub labels: Labels,
}

/// A request's deadline (`--request-timeout-ms` from its arrival).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    started: Instant,
    limit: Option<Duration>,
}

impl Deadline {
    /// Awaits `work` until the deadline; past it, counts a `timeout` shed and gives
    /// [`RankError::Timeout`] (the work is dropped, or, for a blocking task, detached).
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, RankError> {
        let Some(limit) = self.limit else {
            return Ok(work.await);
        };
        let left = limit.saturating_sub(self.started.elapsed());
        tokio::time::timeout(left, work).await.map_err(|_| {
            telemetry::record_shed(telemetry::SHED_TIMEOUT);
            RankError::Timeout(limit.as_millis() as u64)
        })
    }
}

impl RankService {
    /// A service over `registry` with `limits`: no buckets, no deadline, sequential scoring.
    pub fn new(registry: Arc<Registry>, limits: Limits) -> RankService {
        RankService {
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            registry,
            buckets: Arc::new(Buckets::none()),
            scoring: Arc::new(ScoringPool::sequential()),
            limits,
            request_timeout: None,
        }
    }

    /// The same service with a deadline per request.
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> RankService {
        self.request_timeout = timeout;
        self
    }

    /// The same service with a bucket plan.
    pub fn with_buckets(mut self, buckets: Arc<Buckets>) -> RankService {
        self.buckets = buckets;
        self
    }

    /// The same service scoring on `pool`.
    pub fn with_scoring(mut self, pool: Arc<ScoringPool>) -> RankService {
        self.scoring = pool;
        self
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The in-flight permits (for tests and operations tooling).
    pub fn inflight(&self) -> &Arc<Semaphore> {
        &self.inflight
    }

    /// Takes a permit for one request, or refuses it at once (counted as an `overloaded` shed).
    pub fn admit(&self) -> Result<Permit, RankError> {
        Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map(Permit)
            .map_err(|_| {
                telemetry::record_shed(telemetry::SHED_OVERLOADED);
                RankError::Overloaded
            })
    }

    /// The deadline of a request that arrived at `started`.
    pub fn deadline(&self, started: Instant) -> Deadline {
        Deadline {
            started,
            limit: self.request_timeout,
        }
    }

    /// Validates, routes and ranks one decoded request (module doc).
    pub async fn rank(
        &self,
        permit: Permit,
        req: RankRequest,
        ctx: &RequestContext<'_>,
    ) -> Handled {
        let mut labels = Labels::default();
        let result = self.rank_labelled(permit, req, ctx, &mut labels).await;
        Handled { result, labels }
    }

    async fn rank_labelled(
        &self,
        permit: Permit,
        req: RankRequest,
        ctx: &RequestContext<'_>,
        labels: &mut Labels,
    ) -> Result<RankOutcome, RankError> {
        req.validate(&self.limits)?;
        let (bucket, snap) = self.route(&req, ctx.bucket_hint, labels)?;
        labels.model = snap.info().model.clone();
        labels.version = snap.info().version.to_string();
        telemetry::record_stage(telemetry::STAGE_DECODE, ctx.started.elapsed());
        let request_id = response_request_id(req.request_id.as_deref(), ctx.request_id);
        let candidates = req.candidates.len();
        let with_probability = req.options.with_probability;
        let (work_snap, pool) = (Arc::clone(&snap), Arc::clone(&self.scoring));
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            with_thread_scratch(|scratch| work_snap.rank(&req, &pool, scratch))
        });
        let ranked = self
            .deadline(ctx.started)
            .run(work)
            .await?
            .map_err(|e| RankError::Internal(format!("scoring task failed: {e}")))??;
        telemetry::record_stage(telemetry::STAGE_TOWER, ranked.timings.tower);
        telemetry::record_stage(telemetry::STAGE_SCORING, ranked.timings.scoring);
        telemetry::record_rank(labels, candidates, ranked.stats.unknown);
        let info = snap.info();
        Ok(RankOutcome {
            request_id,
            bucket,
            model: info.model.clone(),
            version: info.version,
            items: ranked.items,
            with_probability,
            candidates,
            stats: ranked.stats,
            ignored_features: ranked.ignored_features,
            dtype: info.dtype,
            took_us: ctx.started.elapsed().as_micros() as u64,
        })
    }

    /// The bucket label and the snapshot that serve `req` (the body's bucket override wins over the
    /// transport's; a bucket's model that is not live is the server's 503, not the client's 404).
    fn route(
        &self,
        req: &RankRequest,
        hint: BucketHint<'_>,
        labels: &mut Labels,
    ) -> Result<(String, Arc<Snapshot>), RankError> {
        let hinted = match hint {
            BucketHint::None => None,
            BucketHint::Given(name) => Some(name),
            BucketHint::Unreadable => {
                return Err(RankError::InvalidRequest(format!(
                    "{BUCKET_HEADER}: not valid ASCII"
                )))
            }
        };
        let route = self.buckets.route_key(
            req.options.bucket.as_deref().or(hinted),
            req.options.model.as_deref(),
            || user_key_of(req.user.id.as_ref()),
        )?;
        if route.labelled {
            labels.bucket = route.bucket.clone();
        }
        let snap = match (&route.model, route.from_plan) {
            (Some(m), true) => {
                self.registry
                    .get_version(m, route.version)
                    .map_err(|e| match e {
                        RegistryError::UnknownModel(_)
                        | RegistryError::NoModel
                        | RegistryError::AmbiguousModel(_)
                        | RegistryError::VersionNotLoaded { .. } => RankError::BucketUnavailable {
                            bucket: route.bucket.clone(),
                            reason: e.to_string(),
                        },
                    })?
            }
            (m, _) => self.registry.get(m.as_deref())?,
        };
        Ok((route.bucket, snap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
        assert_eq!(response_request_id(Some("body"), "hdr"), "body");
        assert_eq!(response_request_id(Some(""), "hdr"), "hdr");
        assert_eq!(response_request_id(None, "hdr"), "hdr");
        let long = "é".repeat(300);
        assert_eq!(
            response_request_id(Some(&long), "hdr").chars().count(),
            MAX_REQUEST_ID_CHARS
        );
    }

    /// Admission is a bounded number of permits: refused at once when none is free, and free again
    /// once a permit is dropped.
    #[test]
    fn admission_sheds_beyond_max_inflight() {
        let registry = Arc::new(Registry::new(
            std::path::Path::new("/nonexistent"),
            None,
            crate::snapshot::LoadOptions::default(),
        ));
        let limits = Limits {
            max_inflight: 2,
            ..Limits::default()
        };
        let service = RankService::new(registry, limits);
        let a = service.admit().unwrap();
        let _b = service.admit().unwrap();
        assert_eq!(service.admit().unwrap_err(), RankError::Overloaded);
        drop(a);
        assert!(service.admit().is_ok());
    }

    #[tokio::test]
    async fn deadline_cuts_slow_work_and_passes_fast_work() {
        let registry = Arc::new(Registry::new(
            std::path::Path::new("/nonexistent"),
            None,
            crate::snapshot::LoadOptions::default(),
        ));
        let service = RankService::new(registry, Limits::default())
            .with_request_timeout(Some(Duration::from_millis(20)));
        let d = service.deadline(Instant::now());
        assert_eq!(d.run(async { 7 }).await, Ok(7));
        let slow = d.run(tokio::time::sleep(Duration::from_secs(30))).await;
        assert_eq!(slow, Err(RankError::Timeout(20)));
        let none = RankService::new(service.registry().clone(), Limits::default());
        assert_eq!(none.deadline(Instant::now()).run(async { 1 }).await, Ok(1));
    }
}
