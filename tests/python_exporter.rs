//! The format spec is enough to write an exporter in another language: the Python example in
//! docs/examples (numpy + safetensors, its own numpy forward pass for the golden checks) produces a
//! snapshot that `prerank validate` accepts, golden checks included.
//!
//! Needs `python3` with numpy and safetensors; `.ci/run` installs them. Outside CI the test is skipped
//! (with a message) when they are missing; under CI (`CI` set) their absence is a failure.

use std::process::Command;

#[test]
fn python_example_exporter_produces_a_valid_snapshot() {
    let have_deps = Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_deps {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide python3 with numpy and safetensors"
        );
        eprintln!("SKIPPED: python3 with numpy and safetensors not available (pip install numpy safetensors)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("py-student").join("1");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/export_snapshot.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&dest)
        .output()
        .unwrap();
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
