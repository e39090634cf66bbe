//! Top-k recall of the compact item dtypes (f16, int8) against f32 on a real snapshot.
//!
//! Re-encodes the snapshot's f32 item vectors with the format crate's writers (`vectors::encode`, the
//! same code the trainer's export uses), then for `--users` random users (the snapshot's own feature
//! schema, behaviours drawn from its item ids) ranks **every** item with each dtype and compares the
//! top `k` item sets with the f32 one. Prints mean / min / 5th-percentile recall per dtype as JSON.
//!
//!     cargo run --release --example recall -- models/pfd-student/1 --users 200 --k 1000

use prerank::model::UserInput;
use prerank::scoring::{rank, ItemStore, Kernel, Query, Scratch};
use prerank::snapshot::{LoadOptions, Snapshot};
use prerank::synth::sample_request;
use prerank_format::vectors::{encode, ItemVectors};
use prerank_format::Dtype;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "models/pfd-student/1".into()));
    let (mut users, mut k) = (200usize, 1000usize);
    while let Some(a) = args.next() {
        let v = args.next().ok_or("flag without a value")?;
        match a.as_str() {
            "--users" => users = v.parse()?,
            "--k" => k = v.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let snap = Snapshot::load(
        &dir,
        &LoadOptions {
            dtype: Some(Dtype::F32),
            ..LoadOptions::default()
        },
    )?;
    let files = snap.files();
    let f32_vectors = files.vectors_for(Dtype::F32).ok_or("no f32 vectors")?;
    let dim = f32_vectors.dim();
    let flat: Vec<f32> = (0..f32_vectors.count())
        .flat_map(|i| f32_vectors.row(i).to_f32())
        .collect();
    let f16 = ItemVectors::parse(encode(Dtype::F16, dim, &flat), "f16")?;
    let int8 = ItemVectors::parse(encode(Dtype::Int8, dim, &flat), "int8")?;
    let ids = files.index.ids().to_vec();
    let tau = snap.manifest().tau;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut scratch = Scratch::default();
    let mut recalls: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..users {
        let mut req = sample_request(&mut rng, &ids, 0, k as i64);
        req.user.id = Some(serde_json::json!(rng.gen_range(1..1_000_000u64)));
        req.user.features.insert(
            "purchase_level".into(),
            serde_json::json!(rng.gen_range(1..6)),
        );
        let user = req.user.into_domain();
        let u = snap.user_vector(&UserInput::new(&user)?)?;
        let query = Query {
            user: &u,
            tau,
            candidates: &ids,
            k,
        };
        let store = ItemStore::new(f32_vectors, &files.index);
        let (items, _) = rank(store, &query, Kernel::Fast, &mut scratch);
        let reference: HashSet<u64> = items.iter().map(|x| x.item_id).collect();
        for (slot, v) in [&f16, &int8].into_iter().enumerate() {
            let store = ItemStore::new(v, &files.index);
            let (items, _) = rank(store, &query, Kernel::Fast, &mut scratch);
            let got: HashSet<u64> = items.iter().map(|x| x.item_id).collect();
            recalls[slot]
                .push(got.intersection(&reference).count() as f64 / reference.len() as f64);
        }
    }
    let summary = |r: &mut Vec<f64>| {
        r.sort_by(f64::total_cmp);
        serde_json::json!({
            "mean": r.iter().sum::<f64>() / r.len() as f64,
            "min": r[0],
            "p05": r[r.len() / 20],
        })
    };
    let [f16_r, int8_r] = &mut recalls;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "snapshot": dir,
            "items": ids.len(),
            "users": users,
            "k": k,
            "recall_vs_f32": { "f16": summary(f16_r), "int8": summary(int8_r) },
        }))?
    );
    Ok(())
}
