//! The format spec is enough to write an exporter in another language: the Python example in
//! docs/examples, a few lines over the `prerank` Python package's exporter (clients/python: numpy +
//! safetensors, its own numpy forward pass for the golden checks), produces a snapshot that
//! `prerank validate` accepts, golden checks included.
//!
//! Runs the interpreter named by `PRERANK_PYTHON` (default `python3`) with this checkout's
//! `clients/python/src` first on `PYTHONPATH`, so the exporter under test is always the one in the
//! tree; the interpreter needs the package's dependencies (`pip install ./clients/python`). `.ci/run`
//! installs the package into a virtualenv and points `PRERANK_PYTHON` at it. Outside CI the test is
//! skipped (with a message) when the dependencies are missing; under CI (`CI` set) that is a failure.

use std::process::Command;

fn python() -> Command {
    let interpreter = std::env::var("PRERANK_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(interpreter);
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/src");
    let path = match std::env::var_os("PYTHONPATH") {
        Some(rest) if !rest.is_empty() => format!("{src}:{}", rest.to_string_lossy()),
        _ => src.to_string(),
    };
    cmd.env("PYTHONPATH", path);
    cmd
}

#[test]
fn python_example_exporter_produces_a_valid_snapshot() {
    let have_deps = python()
        .args(["-c", "import prerank.export"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_deps {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide PRERANK_PYTHON (or python3) with the prerank package's dependencies"
        );
        eprintln!(
            "SKIPPED: no python3 with the prerank package's dependencies (pip install ./clients/python)"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("py-student").join("1");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/export_snapshot.py"
    );
    let out = python().arg(script).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_prerank"))
        .arg("validate")
        .arg(&dest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 golden checks verified"), "{text}");
}
