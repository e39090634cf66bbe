//! Metrics and logging set-up. Metric names are constants here, prefixed `prerank_`, with units in the
//! name; histograms have explicit buckets from 50 us. Request metrics carry route, status, model,
//! version and bucket labels (no bucket label without a bucket config: absent equals empty). Model lifecycle metrics carry
//! the model label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "prerank_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "prerank_request_duration_seconds";
pub const CANDIDATES_PER_REQUEST: &str = "prerank_candidates_per_request";
pub const UNKNOWN_CANDIDATES_TOTAL: &str = "prerank_unknown_candidates_total";
/// Version loads attempted (complete directories only; incomplete ones are retried, not counted).
pub const MODEL_LOAD_ATTEMPTS_TOTAL: &str = "prerank_model_load_attempts_total";
/// Version loads rejected (checksum, contents, golden checks, manifest/directory mismatch, warm-up).
pub const MODEL_LOAD_FAILURES_TOTAL: &str = "prerank_model_load_failures_total";
/// Time to load, verify and warm up one version (successful or not).
pub const MODEL_LOAD_DURATION_SECONDS: &str = "prerank_model_load_duration_seconds";
/// The version each model serves to requests that name none (0: none).
pub const MODEL_LIVE_VERSION: &str = "prerank_model_live_version";
/// Admin API calls, by operation and status.
pub const ADMIN_REQUESTS_TOTAL: &str = "prerank_admin_requests_total";

/// Time spent in one stage of a ranking request, seconds; label `stage` (decode, tower, scoring,
/// encode). Decode includes body read, JSON parsing and validation; tower and scoring run on the
/// blocking pool.
pub const STAGE_DURATION_SECONDS: &str = "prerank_stage_duration_seconds";
/// Requests being handled now (probes and /metrics excluded).
pub const IN_FLIGHT_REQUESTS: &str = "prerank_in_flight_requests";
/// Ranking requests refused or cut short to protect the service; label `reason`
/// (`overloaded`: no in-flight permit, 503; `timeout`: past --request-timeout-ms, 504).
pub const SHED_REQUESTS_TOTAL: &str = "prerank_shed_requests_total";
/// Bytes of snapshot files mapped (or copied, in `copy` load mode) per loaded model version; 0 once
/// the version is no longer loaded.
pub const MODEL_MAPPED_BYTES: &str = "prerank_model_mapped_bytes";
/// Bytes of a loaded version's mapped files backed by huge pages (`AnonHugePages` + `FilePmdMapped`
/// in /proc/self/smaps over each file's own address range); coverage = this / mapped bytes. Linux;
/// both load modes (a `copy` is an anonymous map whose range is known too).
pub const MODEL_HUGE_PAGE_BYTES: &str = "prerank_model_huge_page_bytes";

/// Resident bytes of a loaded version's mapped files (from `/proc/self/smaps` over their ranges).
pub const MODEL_RESIDENT_BYTES: &str = "prerank_model_resident_bytes";
/// Deferred (background) verifications of item files, by result (`ok` / `failed`).
pub const MODEL_DEFERRED_VERIFY_TOTAL: &str = "prerank_model_deferred_verify_total";
/// Ranking requests whose scoring was split across the scoring pool, and chunks run.
pub const SCORING_SPLITS_TOTAL: &str = "prerank_scoring_splits_total";
pub const STAGE_DECODE: &str = "decode";
pub const STAGE_TOWER: &str = "tower";
pub const STAGE_SCORING: &str = "scoring";
pub const STAGE_ENCODE: &str = "encode";
pub const SHED_OVERLOADED: &str = "overloaded";
pub const SHED_TIMEOUT: &str = "timeout";

/// Latency buckets, seconds: 50 us .. 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Model load buckets, seconds: 10 ms .. 10 min.
pub const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
pub const CANDIDATE_BUCKETS: &[f64] = &[
    10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0, 200_000.0,
];

/// Labels of one request (model and version empty until a model is chosen).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub bucket: String,
    pub model: String,
    pub version: String,
}

/// The process-wide Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (only possible when embedding prerank in a larger program).
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION_SECONDS.into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CANDIDATES_PER_REQUEST.into()),
                        CANDIDATE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STAGE_DURATION_SECONDS.into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(MODEL_LOAD_DURATION_SECONDS.into()),
                        LOAD_BUCKETS,
                    )
                })
                .ok()
                .and_then(|b| b.install_recorder().ok())
                .inspect(|_| describe())
        })
        .clone()
}

/// `# HELP` text of every metric (promtool requires it).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route, status, model, version, bucket."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        "Time from request arrival to response, seconds, by route, status, model, version, bucket."
    );
    describe_histogram!(
        CANDIDATES_PER_REQUEST,
        "Candidates in each accepted ranking request."
    );
    describe_counter!(
        UNKNOWN_CANDIDATES_TOTAL,
        "Candidate ids not in the served snapshot (skipped), by model, version, bucket."
    );
    describe_counter!(
        MODEL_LOAD_ATTEMPTS_TOTAL,
        "Version loads attempted, by model."
    );
    describe_counter!(
        MODEL_LOAD_FAILURES_TOTAL,
        "Version loads rejected, by model."
    );
    describe_histogram!(
        MODEL_LOAD_DURATION_SECONDS,
        "Time to load, verify and warm up one version, seconds, by model."
    );
    describe_gauge!(
        MODEL_LIVE_VERSION,
        "Version served by default, by model (0: none)."
    );
    describe_counter!(
        ADMIN_REQUESTS_TOTAL,
        "Admin API calls, by operation and status."
    );
    describe_histogram!(
        STAGE_DURATION_SECONDS,
        "Time in one stage of a ranking request (decode, tower, scoring, encode), seconds."
    );
    describe_gauge!(
        IN_FLIGHT_REQUESTS,
        "Requests being handled (probes and /metrics excluded)."
    );
    describe_counter!(
        SHED_REQUESTS_TOTAL,
        "Ranking requests refused (overloaded) or cut short (timeout), by reason."
    );
    describe_gauge!(
        MODEL_HUGE_PAGE_BYTES,
        "Bytes of a loaded version's mapped files backed by huge pages (AnonHugePages + FilePmdMapped)."
    );
    describe_gauge!(
        MODEL_RESIDENT_BYTES,
        "Resident bytes of a loaded version's mapped files (page-cache pages mapped or private copies)."
    );
    describe_counter!(
        MODEL_DEFERRED_VERIFY_TOTAL,
        "Background checksum and content verifications of item files (--verify deferred), by result."
    );
    describe_counter!(
        SCORING_SPLITS_TOTAL,
        "Ranking requests whose scoring was split across the scoring pool (--scoring-threads)."
    );
    describe_gauge!(
        MODEL_MAPPED_BYTES,
        "Bytes of snapshot files in memory per loaded version (0 once unloaded)."
    );
}

/// Request labels in exposition order. Without a bucket config the `bucket` label is left out (in
/// Prometheus an absent label equals an empty one), so series stay as they were before buckets.
fn label_set(labels: &Labels, head: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    let mut l = head;
    l.push(("model", labels.model.clone()));
    l.push(("version", labels.version.clone()));
    if !labels.bucket.is_empty() {
        l.push(("bucket", labels.bucket.clone()));
    }
    l
}

pub fn record_request(route: &'static str, status: u16, labels: &Labels, took: Duration) {
    let l = label_set(
        labels,
        vec![("route", route.to_string()), ("status", status.to_string())],
    );
    metrics::counter!(REQUESTS_TOTAL, &l).increment(1);
    metrics::histogram!(REQUEST_DURATION_SECONDS, &l).record(took.as_secs_f64());
}

pub fn record_rank(labels: &Labels, candidates: usize, unknown: usize) {
    let l = label_set(labels, Vec::new());
    metrics::histogram!(CANDIDATES_PER_REQUEST, &l).record(candidates as f64);
    metrics::counter!(UNKNOWN_CANDIDATES_TOTAL, &l).increment(unknown as u64);
}

pub fn record_stage(stage: &'static str, took: Duration) {
    metrics::histogram!(STAGE_DURATION_SECONDS, "stage" => stage).record(took.as_secs_f64());
}

pub fn record_shed(reason: &'static str) {
    metrics::counter!(SHED_REQUESTS_TOTAL, "reason" => reason).increment(1);
}

pub fn set_mapped_bytes(model: &str, version: u64, bytes: u64) {
    metrics::gauge!(MODEL_MAPPED_BYTES, "model" => model.to_string(), "version" => version.to_string())
        .set(bytes as f64);
}

pub fn set_huge_page_bytes(model: &str, version: u64, bytes: u64) {
    metrics::gauge!(MODEL_HUGE_PAGE_BYTES, "model" => model.to_string(), "version" => version.to_string())
        .set(bytes as f64);
}

pub fn set_resident_bytes(model: &str, version: u64, bytes: u64) {
    metrics::gauge!(MODEL_RESIDENT_BYTES, "model" => model.to_string(), "version" => version.to_string())
        .set(bytes as f64);
}

pub fn record_deferred_verify(model: &str, ok: bool) {
    metrics::counter!(MODEL_DEFERRED_VERIFY_TOTAL, "model" => model.to_string(), "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

pub fn record_admin(op: &'static str, status: u16) {
    metrics::counter!(ADMIN_REQUESTS_TOTAL, "op" => op, "status" => status.to_string())
        .increment(1);
}

/// Installs the tracing subscriber: human-readable or JSON lines, filtered by `RUST_LOG`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
