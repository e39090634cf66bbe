//! Arbitrary bytes as a `POST /v1/rank` body: decoding, feature mapping, the user tower and scoring
//! over a small synthetic snapshot must never panic, whatever the input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prerank::api::{parse_json, RankRequest};
use prerank::parallel::ScoringPool;
use prerank::scoring::Scratch;
use prerank::snapshot::{LoadOptions, Snapshot};

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<(tempfile::TempDir, Snapshot)> = OnceLock::new();
    let (_, snap) = SNAP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m/1");
        let cfg = prerank::synth::SynthConfig { model: "m".into(), items: 300, golden: 0, ..Default::default() };
        prerank::synth::generate(&path, &cfg).expect("synth");
        let snap = Snapshot::load(&path, &LoadOptions::default()).expect("load");
        (dir, snap)
    });
    snap
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_json::<RankRequest>(data) else { return };
    let mut req = req.into_domain();
    req.k = req.k.clamp(1, 1000);
    let mut scratch = Scratch::default();
    let _ = snapshot().rank(&req, &ScoringPool::sequential(), &mut scratch);
});
