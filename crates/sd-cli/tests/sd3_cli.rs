//! `sd generate` on an SD3 folder through the real binary: the image equals diffusers' StableDiffusion3Pipeline
//! output for the same request (fixtures/sd3_pipeline/no_t5, from scripts/fixtures/gen_82_sd3_pipeline.py) to ±1 in
//! 8 bits on at least 99.9 % of the values, `--no-t5` is recorded in the parameters, and the flags SD3 does not take
//! are refused with exit code 2.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn generate(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a photograph of an astronaut riding a horse", "-n", "blurry, low quality"]);
    c.args(["--steps", "4", "--cfg-scale", "5", "--seed", "1", "--width", "16", "--height", "16"]);
    c.args(["--dtype", "f32", "--device", "cpu", "-q", "--no-watermark", "--no-t5", "--max-sequence-length", "16"]);
    c.arg("--model").arg(fixtures().join("models/sd3"));
    c.arg("--output").arg(out.join("{seed}.png"));
    c
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn generate_matches_diffusers_without_t5() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&mut generate(dir.path()));
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("1.png");
    let got = image::open(&png).unwrap().to_rgb8();
    let reference = safetensors::SafeTensors::deserialize(
        &std::fs::read(fixtures().join("sd3_pipeline/no_t5.safetensors")).unwrap(),
    )
    .unwrap()
    .tensor("image")
    .unwrap()
    .data()
    .chunks(4)
    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    .collect::<Vec<f32>>();
    assert_eq!(got.as_raw().len(), reference.len());
    let off =
        got.as_raw().iter().zip(&reference).filter(|(g, r)| (**g as f32 - (**r * 255.0).round()).abs() > 1.0).count();
    println!("values off by more than 1: {off} of {}", reference.len());
    assert!(off as f64 <= 0.001 * reference.len() as f64, "{off} values differ by more than 1");
    let bytes = std::fs::read(&png).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("T5: off") && text.contains("Steps: 4"), "parameters chunk lacks the SD3 settings");
}

#[test]
fn flags_sd3_does_not_take_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let init = fixtures().join("pipeline/init.png");
    for (extra, needle) in [
        (vec!["--init-image", init.to_str().unwrap()], "--init-image"),
        (vec!["--sampler", "euler"], "flow-matching"),
        (vec!["--clip-skip", "2"], "--clip-skip"),
        (vec!["--batch-size", "0"], "--batch-size"),
    ] {
        let (code, err) = run(generate(dir.path()).args(&extra));
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // and --no-t5 on a UNet model
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "x", "--no-t5", "--model"]).arg(fixtures().join("models/sd1"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SD3"), "{err}");
}
