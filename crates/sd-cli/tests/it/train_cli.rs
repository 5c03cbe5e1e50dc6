//! `sd train` end to end through the binary: a short run on two tiny images writes a loadable model, a loss log
//! and a checkpoint; dataset problems exit with code 1 and name the file; bad flags exit with code 2.

use image::{Rgb, RgbImage};
use std::path::Path;
use std::process::Command;

const SD1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1");

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

fn write_dataset(dir: &Path) {
    for (i, (fg, caption)) in [([255u8, 0, 0], "a red square"), ([0, 255, 0], "a green square")].iter().enumerate() {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            if (4..12).contains(&x) && (4..12).contains(&y) {
                Rgb(*fg)
            } else {
                Rgb([0, 0, 255])
            }
        });
        img.save(dir.join(format!("{i}.png"))).expect("png");
        std::fs::write(dir.join(format!("{i}.txt")), caption).expect("caption");
    }
}

#[test]
fn short_run_writes_a_model() {
    let data = tempfile::tempdir().expect("tempdir");
    write_dataset(data.path());
    let out = tempfile::tempdir().expect("tempdir");
    let o = sd()
        .args(["train", "--model", SD1, "--steps", "3", "--lr", "1e-3", "--batch-size", "2", "--checkpoint-every", "2"])
        .arg("--dataset")
        .arg(data.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .expect("run sd");
    assert!(o.status.success(), "sd train failed: {}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(out.path().join("loss.jsonl")).expect("loss log");
    assert_eq!(log.lines().count(), 3);
    assert!(out.path().join("checkpoint-2/training_state.json").is_file());
    assert!(out.path().join("unet/diffusion_pytorch_model.safetensors").is_file());
    let g = sd()
        .args([
            "generate",
            "a red square",
            "--steps",
            "2",
            "-W",
            "16",
            "-H",
            "16",
            "--dtype",
            "f32",
            "--device",
            "cpu",
            "--seed",
            "1",
        ])
        .arg("--model")
        .arg(out.path())
        .arg("--output")
        .arg(out.path().join("gen.png"))
        .output()
        .expect("run sd generate");
    assert!(g.status.success(), "generating with the trained model failed: {}", String::from_utf8_lossy(&g.stderr));
}

#[test]
fn dataset_and_flag_errors() {
    let data = tempfile::tempdir().expect("tempdir");
    write_dataset(data.path());
    std::fs::remove_file(data.path().join("1.txt")).expect("rm");
    let out = tempfile::tempdir().expect("tempdir");
    let o = sd()
        .args(["train", "--model", SD1])
        .arg("--dataset")
        .arg(data.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("1.png") && err.contains("no caption"), "{err}");
    let o = sd()
        .args(["train", "--model", SD1, "--dtype", "f16"])
        .arg("--dataset")
        .arg(data.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}
