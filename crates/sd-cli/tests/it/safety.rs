//! The safety checker through the real `sd` binary: a flagged image is never written with `--safety block`
//! (the default when a model ships a checker), is written and reported with `--safety warn`, and the decision is
//! in `--json`. The tiny fixture checker (fixtures/clip/safety) gets its concept thresholds rewritten so that it
//! flags everything (threshold −2 < any cosine) or nothing (threshold +2 > any cosine).

use sd_test_support::fixtures;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The sd1 fixture model plus a safety checker whose thresholds all equal `threshold`.
fn model_with_checker(dir: &Path, threshold: f64) -> PathBuf {
    let model = dir.join("model");
    copy_dir(&fixtures().join("models/sd1"), &model);
    copy_dir(&fixtures().join("clip/safety/feature_extractor"), &model.join("feature_extractor"));
    let src = fixtures().join("clip/safety/safety_checker");
    let dst = model.join("safety_checker");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| if k.ends_with("embeds_weights") { (k, v.full_like(threshold)) } else { (k, v) })
        .collect();
    Tensor::write_safetensors(&tensors, dst.join("model.safetensors")).unwrap();
    model
}

fn generate(model: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "a cat", "--steps", "2", "--seed", "3", "--device", "cpu", "--dtype", "f32", "-q", "--json"])
        .arg("--model")
        .arg(model)
        .arg("--output")
        .arg(out.join("{seed}.png"))
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn flagged_image_is_never_written_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_checker(dir.path(), -2.0);
    let out = dir.path().join("out");
    let (code, stdout, stderr) = generate(&model, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let files: Vec<_> = std::fs::read_dir(&out).map(|r| r.collect()).unwrap_or_default();
    assert!(files.is_empty(), "a flagged image was written: {files:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let image = &json["batches"][0]["images"][0];
    assert_eq!(image["flagged"], true, "{stdout}");
    assert!(image["path"].is_null(), "{stdout}");
}

#[test]
fn warn_mode_writes_and_reports_flagged_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_checker(dir.path(), -2.0);
    let out = dir.path().join("out");
    let (code, stdout, stderr) = generate(&model, &out, &["--safety", "warn"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("3.png").exists());
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["batches"][0]["images"][0]["flagged"], true, "{stdout}");
}

#[test]
fn unflagged_image_is_written_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_checker(dir.path(), 2.0);
    let out = dir.path().join("out");
    let (code, stdout, stderr) = generate(&model, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("3.png").exists());
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let image = &json["batches"][0]["images"][0];
    assert_eq!(image["flagged"], false, "{stdout}");
    assert_eq!(image["safety_checked"], true, "{stdout}");
}
