//! `sd generate --ip-adapter` through the real binary: a generation records its adapter in the parameters text
//! (as A1111's ControlNet extension writes IP-Adapter units), and bad flags or files are clear errors with the
//! documented exit codes (2 = how the command was called, 1 = a file that does not fit), never a panic.

use sd_test_support::fixtures;
use std::path::Path;
use std::process::Command;

fn adapter(file: &str) -> String {
    fixtures().join("ip_adapter/models").join(file).display().to_string()
}

fn picture() -> String {
    fixtures().join("ip_adapter/picture.png").display().to_string()
}

fn generate(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a red circle", "--model"]).arg(fixtures().join("models/sd1"));
    c.args(["--steps", "2", "--dtype", "f32", "--device", "cpu", "-q", "--seed", "5", "-W", "32", "-H", "32"]);
    c.args(["--sampler", "Euler", "--safety", "off"]);
    c.arg("--output").arg(out.join("{seed}.png"));
    c
}

/// Run, returning (exit code, stderr); asserts nothing panicked.
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn ip_adapter_generation_records_its_unit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate(dir.path());
    c.args(["--ip-adapter", &adapter("ip-adapter-plus_sd15.safetensors"), "--ip-image", &picture()]);
    c.args(["--ip-scale", "0.6"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let report = sd_provenance::inspect::inspect_file(&dir.path().join("5.png"), None).unwrap();
    let params = report.parameters_raw.unwrap();
    assert!(
        params.contains(
            "ControlNet 0: \"Module: ip-adapter_clip, Model: ip-adapter-plus_sd15, Weight: 0.6, Resize Mode: Crop and \
             Resize, Guidance Start: 0, Guidance End: 1, Control Mode: Balanced\""
        ),
        "{params}"
    );
}

#[test]
fn bad_ip_adapter_flags_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pic = picture();
    let base = adapter("ip-adapter_sd15.safetensors");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--ip-image", &pic], 2, "--ip-image needs --ip-adapter"),
        (vec!["--ip-adapter", &base], 2, "give one image prompt per adapter"),
        (vec!["--ip-adapter", "nope.safetensors", "--ip-image", &pic], 2, "expected an IP-Adapter weight file"),
        (vec!["--ip-adapter", &base, "--ip-image", &pic, "--ip-scale", "11"], 2, "scale must be within [0, 10]"),
        (vec!["--ip-adapter", &base, "--ip-image", &pic, "--ip-scale", "1", "--ip-scale", "2"], 2, "once per adapter"),
        (
            vec!["--ip-adapter", &base, "--ip-image", &pic, "--ip-encoder", "/nonexistent"],
            2,
            "not an image encoder folder",
        ),
        (vec!["--ip-adapter", &base, "--ip-image", "missing.png"], 1, "--ip-image missing.png"),
    ];
    for (flags, want_code, want) in cases {
        let (code, err) = run(generate(dir.path()).args(&flags));
        assert_eq!(code, want_code, "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    let sdxl = adapter("ip-adapter_sdxl.safetensors");
    let (code, err) = run(generate(dir.path()).args(["--ip-adapter", &sdxl, "--ip-image", &pic]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("made for another base model"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no partial output");
}
