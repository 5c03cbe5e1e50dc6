//! `sd convert` end to end on the tiny fixtures: exit codes, the written folder, and atomicity on failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn sd(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).args(args).output().expect("run sd");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn converts_a_ckpt_into_a_diffusers_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("sd2");
    let input = root().join("fixtures/convert/sd2.ckpt");
    let cfg = root().join("fixtures/models/sd2");
    let (code, err) = sd(&[
        "convert",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
        "--config-dir",
        cfg.to_str().expect("utf8"),
        "--dtype",
        "f16",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sd2"), "{err}");
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let sched = std::fs::read_to_string(out.join("scheduler/scheduler_config.json")).expect("scheduler");
    assert!(sched.contains("v_prediction"), "{sched}");
    let unet = sd_core::weights::SafeTensorsFiles::open(&[out.join("unet/diffusion_pytorch_model.safetensors")])
        .expect("open");
    let e = unet.entry("conv_in.weight").expect("conv_in.weight");
    assert_eq!(e.dtype, safetensors::Dtype::F16);

    // An existing destination is refused (usage error), and left untouched.
    let (code, err) = sd(&["convert", input.to_str().expect("utf8"), "-o", out.to_str().expect("utf8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--overwrite"), "{err}");
}

#[test]
fn bad_flags_and_bad_files_fail_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x");
    let input = root().join("fixtures/convert/sd1.safetensors");
    let (code, err) =
        sd(&["convert", input.to_str().expect("utf8"), "-o", out.to_str().expect("utf8"), "--dtype", "f8"]);
    assert_eq!(code, 2, "{err}");
    let bad = tmp.path().join("evil.ckpt");
    std::fs::write(&bad, b"PK\x03\x04 this is not really a zip").expect("write");
    let (code, err) = sd(&["convert", bad.to_str().expect("utf8"), "-o", out.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a readable zip checkpoint"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("e").file_name()).collect();
    assert_eq!(left.len(), 1, "only the input file may remain: {left:?}");
}

#[test]
fn converts_an_sdxl_refiner_detected_or_named() {
    // The refiner has one text encoder (OpenCLIP, written as text_encoder_2) and an img2img model_index.
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = root().join("fixtures/convert/sdxl-refiner.safetensors");
    let cfg = root().join("fixtures/models/sdxl-refiner");
    let vocab = root().join(".sd-data/bpe_simple_vocab_16e6.txt.gz");
    for family in ["auto", "sdxl-refiner"] {
        let out = tmp.path().join(family);
        let (code, err) = sd(&[
            "convert",
            input.to_str().expect("utf8"),
            "-o",
            out.to_str().expect("utf8"),
            "--family",
            family,
            "--config-dir",
            cfg.to_str().expect("utf8"),
            "--vocab",
            vocab.to_str().expect("utf8"),
        ]);
        assert_eq!(code, 0, "{family}: {err}");
        assert!(err.contains("sdxl-refiner"), "{family}: {err}");
        for f in [
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/vocab.json",
        ] {
            assert!(out.join(f).exists(), "{family}: {f} missing");
        }
        assert!(!out.join("text_encoder").exists() && !out.join("tokenizer").exists(), "{family}");
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).expect("index")).expect("json");
        assert_eq!(index["_class_name"], "StableDiffusionXLImg2ImgPipeline", "{family}");
        assert_eq!(index["requires_aesthetics_score"], true, "{family}");
    }
}
