//! Arbitrary bytes as a protobuf `POST /v1/rank` body (`Content-Type: application/x-protobuf`):
//! prost decoding, the conversion to the domain request, feature mapping, the user tower and
//! scoring over a small synthetic snapshot must never panic, whatever the input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
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
    let Ok(mut req) = prerank::proto::decode(data) else { return };
    // Whatever decodes must also be expressible as JSON (its twin, what tools compare against).
    let twin = prerank::api::RankRequest::from(req.clone());
    let _ = serde_json::to_vec(&twin).expect("a decoded request serialises as JSON");
    req.k = req.k.clamp(1, 1000);
    let mut scratch = Scratch::default();
    let _ = snapshot().rank(&req, &ScoringPool::sequential(), &mut scratch);
});
