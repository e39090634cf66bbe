//! `prerank validate` / `inspect` on real files: every kind of corruption is rejected with a message
//! naming the file and what was expected vs found; a good snapshot validates and lists its ids.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use prerank_format::Dtype;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn prerank(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prerank"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A fresh copy of a good snapshot, to corrupt.
fn copy_of(src: &Path, dst_root: &Path, name: &str) -> PathBuf {
    let dst = dst_root.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Rewrites a data file and fixes its manifest size and checksum, so only deeper checks can catch it.
fn rewrite_with_valid_checksum(dir: &Path, file: &str, bytes: Vec<u8>) {
    std::fs::write(dir.join(file), &bytes).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    edit_manifest(dir, |m| {
        m["files"][file]["sha256"] = Value::String(sha);
        m["files"][file]["bytes"] = Value::from(bytes.len());
    });
}

#[test]
fn validate_accepts_good_and_rejects_each_corruption() {
    let (root, good) = common::model_root(600, &[Dtype::F32, Dtype::Int8]);
    let work = tempfile::tempdir().unwrap();
    let (ok, out) = prerank(&["validate", good.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: m/1: 600 items x 128"), "{out}");

    type Corrupt = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Corrupt, &str)> = vec![
        (
            "truncated",
            Box::new(|d: &Path| {
                let p = d.join("items.f32.vec");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            }),
            "items.f32.vec: wrong size: expected",
        ),
        (
            "flipped byte",
            Box::new(|d: &Path| {
                let p = d.join("user_tower.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len();
                b[n - 7] ^= 1;
                std::fs::write(&p, b).unwrap();
            }),
            "user_tower.safetensors: sha256 mismatch",
        ),
        (
            "wrong checksum",
            Box::new(|d: &Path| {
                edit_manifest(d, |m| {
                    m["files"]["items.idx"]["sha256"] = Value::String("0".repeat(64));
                })
            }),
            "items.idx: sha256 mismatch: manifest says 0000",
        ),
        (
            "wrong dim",
            Box::new(|d: &Path| {
                edit_manifest(d, |m| {
                    m["items"]["dim"] = Value::from(64);
                    m["architecture"]["tower_widths"][2] = Value::from(64);
                    m["golden"] = Value::Array(vec![]);
                })
            }),
            "items.f32.vec: dim: expected 64, found 128",
        ),
        (
            "inconsistent dim",
            Box::new(|d: &Path| {
                edit_manifest(d, |m| {
                    m["items"]["dim"] = Value::from(64);
                })
            }),
            "items.dim: expected 128 (last tower width), found 64",
        ),
        (
            "not normalised",
            Box::new(|d: &Path| {
                let mut b = std::fs::read(d.join("items.f32.vec")).unwrap();
                let row = 64 + 5 * 512; // row 5
                for j in 0..128 {
                    let at = row + 4 * j;
                    let v = f32::from_le_bytes(b[at..at + 4].try_into().unwrap()) * 1.5;
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                rewrite_with_valid_checksum(d, "items.f32.vec", b);
            }),
            "items.f32.vec: row 5 is not L2-normalised",
        ),
        (
            "missing file",
            Box::new(|d: &Path| std::fs::remove_file(d.join("items.attr")).unwrap()),
            "items.attr: missing",
        ),
        (
            "missing manifest",
            Box::new(|d: &Path| std::fs::remove_file(d.join("manifest.json")).unwrap()),
            "manifest.json: missing",
        ),
        (
            "bad magic",
            Box::new(|d: &Path| {
                let mut b = std::fs::read(d.join("items.idx")).unwrap();
                b[0] = b'X';
                rewrite_with_valid_checksum(d, "items.idx", b);
            }),
            "items.idx: bad magic",
        ),
        (
            "future format",
            Box::new(|d: &Path| edit_manifest(d, |m| m["format_version"] = Value::from(9))),
            "unsupported format version 9",
        ),
        (
            "extra tensor shape",
            Box::new(|d: &Path| {
                edit_manifest(d, |m| {
                    m["architecture"]["ffn_dim"] = Value::from(7);
                })
            }),
            "shape of tensor attn.ffn1.weight: expected [7,",
        ),
        (
            "golden mismatch",
            Box::new(|d: &Path| {
                edit_manifest(d, |m| {
                    let v = m["golden"][0]["user_vector"][3].as_f64().unwrap();
                    m["golden"][0]["user_vector"][3] = Value::from(v + 0.01);
                })
            }),
            "golden check \"synthetic-0\" failed: user vector differs",
        ),
        (
            "not json",
            Box::new(|d: &Path| std::fs::write(d.join("manifest.json"), b"{oops").unwrap()),
            "manifest.json: invalid manifest",
        ),
    ];
    for (name, corrupt, expect) in cases {
        let dir = copy_of(&good, work.path(), &name.replace(' ', "-"));
        corrupt(&dir);
        let (ok, out) = prerank(&["validate", dir.to_str().unwrap()]);
        assert!(!ok, "{name}: validate must fail");
        assert!(
            out.contains(expect),
            "{name}: expected {expect:?} in: {out}"
        );
    }
    drop(root);
}

#[test]
fn inspect_summarises_and_lists_ids() {
    let (_root, dir) = common::model_root(300, &[Dtype::F32]);
    let (ok, out) = prerank(&["inspect", dir.to_str().unwrap(), "--ids"]);
    assert!(ok, "{out}");
    let ids: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids, common::reference::Reference::open(&dir).ids());
    let (ok, out) = prerank(&["inspect", dir.to_str().unwrap()]);
    assert!(ok);
    assert!(
        out.contains("model:        m") && out.contains("golden checks ok (2)"),
        "{out}"
    );
}

#[test]
fn bundled_default_model_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pfd-student/1");
    let (ok, out) = prerank(&["validate", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("x 128"), "{out}");
}

#[test]
fn synth_is_deterministic_and_refuses_to_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a/1");
    let b = root.path().join("b/1");
    for d in [&a, &b] {
        let (ok, out) = prerank(&[
            "synth",
            d.to_str().unwrap(),
            "--items",
            "200",
            "--model",
            "same",
            "--golden",
            "1",
        ]);
        assert!(ok, "{out}");
    }
    for f in [
        "items.f32.vec",
        "items.idx",
        "items.attr",
        "user_tower.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let (ok, out) = prerank(&["synth", a.to_str().unwrap(), "--items", "200"]);
    assert!(!ok);
    assert!(out.contains("already exists"), "{out}");
    // No temporary directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("1")]);
}
