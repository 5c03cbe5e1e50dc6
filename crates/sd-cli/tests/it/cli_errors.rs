//! Bad input through the real `sd` binary: each case must give a clear message, the documented exit code
//! (2 = how the command was called, 1 = runtime problem), no panic/backtrace, and no partial output file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

fn model() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1").to_string()
}

fn init_png() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/pipeline/init.png").to_string()
}

/// Run, returning (exit code, stderr); asserts nothing panicked.
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn generate(out: &Path) -> Command {
    let mut c = sd();
    c.args(["generate", "--model", &model(), "--steps", "2", "--dtype", "f32", "--device", "cpu", "-q", "--seed", "1"]);
    c.arg("--output").arg(out.join("{seed}.png"));
    c
}

#[test]
fn width_not_multiple_of_8_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(generate(dir.path()).args(["a cat", "--width", "500", "--height", "64"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("width 500") && err.contains("multiple of 8"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn strength_zero_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(generate(dir.path()).args(["a cat", "--init-image", &init_png(), "--strength", "0"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("strength must be in (0, 1]"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn unknown_sampler_lists_valid_names() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) =
        run(generate(dir.path()).args(["a cat", "--sampler", "eulr-a", "--width", "64", "--height", "64"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("eulr-a") && err.to_lowercase().contains("did you mean"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

/// Refused before the model loads: the model path below does not exist, and the error is still the schedule's.
#[test]
fn unknown_schedule_is_a_usage_error_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sd();
    c.args(["generate", "a cat", "--model"]).arg(dir.path().join("no-such-model"));
    c.args(["--sampler", "Euler", "--schedule", "karas", "-q", "--device", "cpu", "--output"]);
    c.arg(dir.path().join("x.png"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--schedule") && err.contains("did you mean \"karras\""), "{err}");
    let mut c = sd();
    c.args(["generate", "a cat", "--model"]).arg(dir.path().join("no-such-model"));
    c.args(["--sampler", "DPM++ 2M Karas", "-q", "--device", "cpu", "--output"]).arg(dir.path().join("x.png"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--sampler") && err.contains("did you mean"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn missing_model_pieces_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("model");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(Path::new(&model()).join("model_index.json"), broken.join("model_index.json")).unwrap();
    let out = dir.path().join("out");
    let mut c = sd();
    c.args(["generate", "a cat", "--model"])
        .arg(&broken)
        .args(["-q", "--device", "cpu", "--output"])
        .arg(out.join("x.png"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing") && err.contains("text_encoder") || err.contains("unet"), "{err}");
    assert!(!out.exists());
}

#[test]
fn unreadable_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (code, err) = run(generate(&out).args(["a cat"]).arg("--init-image").arg(&bad));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.png"), "{err}");
    assert!(files_in(&out).is_empty());
}

#[test]
fn mask_of_the_wrong_size_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.png");
    image::GrayImage::new(32, 32).save(&mask).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (code, err) = run(generate(&out).args(["a cat", "--init-image", &init_png()]).arg("--mask").arg(&mask));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mask is 32x32") && err.contains("64x64"), "{err}");
    assert!(files_in(&out).is_empty());
}

#[test]
fn existing_output_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("1.png");
    std::fs::write(&target, b"precious").unwrap();
    let (code, err) = run(generate(dir.path()).args(["a cat", "--width", "64", "--height", "64"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(files_in(dir.path()).len(), 1, "a temp file was left behind");
}

#[test]
fn generates_a_png_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(generate(dir.path()).args(["a cat", "--width", "64", "--height", "64"]));
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("1.png");
    let bytes = std::fs::read(&png).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("parameters") && text.contains("Seed: 1") && text.contains("Negative prompt:"),
        "no A1111 parameters chunk"
    );
    assert!(text.contains("trainedAlgorithmicMedia"), "no IPTC digital source type");
}

#[test]
fn policy_file_refuses_a_listed_term() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.txt");
    std::fs::write(&policy, "# artists I do not imitate\nGreg Example\n").unwrap();
    let (code, err) =
        run(generate(dir.path()).args(["portrait in the style of greg example", "--policy"]).arg(&policy));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused") && err.contains("Greg Example"), "{err}");
    assert_eq!(files_in(dir.path()).len(), 1, "only the policy file should exist");
}

#[test]
fn taesd_with_a_vae_of_another_scale_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taesd = std::env::var("SD_TAESD_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/taesd").to_string());
    let (code, err) = run(generate(dir.path()).args(["a cat", "--taesd", &taesd]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--taesd") && err.contains("1/2"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    for args in [&["samplers"][..], &["samplers", "--json"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close our end before sd writes anything (it is still loading LibTorch), as a reader that quits early does.
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "sd {args:?} panicked on a closed pipe: {err}");
        assert_ne!(status.code(), Some(101), "sd {args:?}: {status:?} {err}");
    }
}

/// clap turns a literal `{n}` in help text into a line break; the `--output` help must still show the placeholder,
/// and the bracketed usage notation of help texts written as attributes must come through unchanged.
#[test]
fn help_shows_every_output_placeholder() {
    let out = sd().args(["generate", "--help"]).output().expect("run sd");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let joined = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        joined.contains("Output path pattern: {date}, {time}, {seed}, {n} (index within the run), {model}"),
        "{help}"
    );
    assert!(!help.contains('\u{1b}'), "no terminal styling in piped help: {help}");
    assert!(joined.contains("A1111 syntax: (word:1.2), [word], BREAK"), "{help}");
    assert!(joined.contains("matmul[:N] or sliced[:N]"), "{help}");
}

#[test]
fn controlnet_flags_are_checked_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    // A control image without a ControlNet is a usage error before any model loads.
    let (code, err) = run(generate(dir.path()).args(["a cat", "--control-image", &init_png()]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--controlnet"), "{err}");
    let (code, err) = run(generate(dir.path()).args([
        "a cat",
        "--controlnet",
        &format!("{fixtures}/models/controlnet-sd1"),
        "--control-image",
        &init_png(),
        "--control-start",
        "0.9",
        "--control-end",
        "0.1",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("control window"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn controlnet_generation_records_its_unit() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    let mut c = sd();
    c.args([
        "generate",
        "a red circle",
        "--model",
        &format!("{fixtures}/models/sd1"),
        "--steps",
        "3",
        "--dtype",
        "f32",
    ]);
    c.args(["-q", "--seed", "5", "-W", "32", "-H", "32", "--sampler", "Euler", "--safety", "off"]);
    c.args(["--controlnet", &format!("{fixtures}/models/controlnet-sd1")]);
    c.args(["--control-image", &format!("{fixtures}/controlnet/control.png"), "--control-scale", "0.7"]);
    c.arg("--output").arg(dir.path().join("{seed}.png"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let report = sd_provenance::inspect::inspect_file(&dir.path().join("5.png"), None).unwrap();
    let params = report.parameters_raw.unwrap();
    assert!(params.contains("ControlNet 0: \"Module: none, Model: controlnet-sd1, Weight: 0.7"), "{params}");
}
