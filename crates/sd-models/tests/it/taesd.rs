//! AutoencoderTiny (TAESD): a tiny random diffusers model (f32, max abs error ≤ 1e-4 vs diffusers) and the real
//! TAESD/TAESDXL weights in ../shared/data/taesd (bf16 files computed in f32, compared with diffusers'
//! AutoencoderTiny loaded from the same files by gen_40_vae.py; tolerance stated per check).

use sd_core::image_io::{load_rgb, rgb_to_tensor, Range};
use sd_models::vae::AutoencoderTiny;
use sd_test_support::fixtures;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The real weights; SD_TAESD_DIR overrides the location (a git worktree outside the workspace's parent).
fn taesd_dir() -> PathBuf {
    let dir = std::env::var_os("SD_TAESD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/taesd")));
    assert!(
        dir.join("taesd_decoder.safetensors").exists(),
        "real TAESD weights are missing: expected taesd_{{encoder,decoder}}.safetensors and taesdxl_* in {} \
         (the shared data folder next to the workspace, or set SD_TAESD_DIR)",
        dir.display()
    );
    dir
}

fn photo() -> Tensor {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.sd-data/astronaut.png"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (it extracts it from the scikit-image wheel)",
        path.display()
    );
    rgb_to_tensor(&load_rgb(&path).expect("decode photo"), Range::Unit, Kind::Float, Device::Cpu)
}

fn read(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("vae").join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn check(label: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{label}: shape");
    let d = (got.to_kind(Kind::Float) - want).abs().max().double_value(&[]);
    println!("{label}: max abs diff {d:.3e}");
    assert!(d <= tol, "{label}: max abs diff {d} > {tol}");
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).square().mean(Kind::Double).double_value(&[]);
    10.0 * (1.0 / mse).log10()
}

#[test]
fn tiny_random_matches_diffusers() {
    let r = read("tiny_taesd_outputs.safetensors");
    let m =
        AutoencoderTiny::load_diffusers(&fixtures().join("vae/tiny_taesd"), Kind::Float, Device::Cpu).expect("load");
    check("tiny encode", &m.encode(&r["x01"]).expect("encode"), &r["latents"], 1e-4);
    check("tiny decode", &m.decode(&r["z"]).expect("decode"), &r["decoded01"], 1e-4);
    assert_eq!(m.config().num_encoder_blocks, vec![1, 2, 2, 2]);
}

#[test]
fn real_taesd_matches_python_and_round_trips_a_photo() {
    let r = read("taesd_real.safetensors");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("vae/taesd_real.json")).expect("json"))
            .expect("json");
    let photo = photo();
    for (prefix, xl) in [("taesd", false), ("taesdxl", true)] {
        let m = AutoencoderTiny::load_taesd_dir(&taesd_dir(), xl, Kind::Float, Device::Cpu).expect("load");
        assert!(m.has_encoder() && m.has_decoder());
        // Same bf16 weights, both sides computing in f32.
        check(
            &format!("{prefix} decode"),
            &m.decode(&r[&format!("{prefix}_z")]).expect("decode"),
            &r[&format!("{prefix}_decoded01")],
            1e-4,
        );
        check(
            &format!("{prefix} encode"),
            &m.encode(&r["synth01"]).expect("encode"),
            &r[&format!("{prefix}_synth_latents")],
            1e-4,
        );

        let latents = m.encode(&photo).expect("encode photo");
        let rec = m.decode(&latents).expect("decode photo").clamp(0.0, 1.0);
        let p = psnr(&rec, &photo);
        let p_py = meta[prefix]["photo_psnr_db"].as_f64().expect("psnr");
        println!("{prefix} photo round trip: {p:.3} dB (Python {p_py:.3} dB)");
        assert!(p >= 24.0, "{prefix}: round-trip PSNR {p:.2} dB < 24 dB");
        assert!((p - p_py).abs() < 0.01, "{prefix}: PSNR {p:.4} differs from Python's {p_py:.4}");
        let mean = latents.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
        let want: Vec<f64> = meta[prefix]["photo_latent_channel_mean"]
            .as_array()
            .expect("mean")
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        check(
            &format!("{prefix} photo latent channel means"),
            &mean,
            &Tensor::from_slice(&want).to_kind(Kind::Float),
            1e-4,
        );
    }
}

#[test]
fn real_taesd_in_bf16_is_close() {
    let r = read("taesd_real.safetensors");
    let m = AutoencoderTiny::load_taesd_dir(&taesd_dir(), false, Kind::BFloat16, Device::Cpu).expect("load");
    let out = m.decode(&r["taesd_z"]).expect("decode");
    assert_eq!(out.kind(), Kind::BFloat16);
    // bf16 activations through ~20 conv layers; image values in [0, 1].
    check("taesd bf16 decode", &out, &r["taesd_decoded01"], 0.06);
}

#[test]
fn decoder_only_and_bad_inputs() {
    let dir = taesd_dir();
    let m =
        AutoencoderTiny::load_taesd_files(None, Some(&dir.join("taesd_decoder.safetensors")), Kind::Float, Device::Cpu)
            .expect("decoder only");
    let err = m.encode(&Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(err.contains("without an encoder"), "{err}");
    let err = m.decode(&Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(err.contains("latent_channels") && err.contains("[1, 3, 8, 8]"), "{err}");

    let empty = tempfile::tempdir().expect("tempdir");
    let err = AutoencoderTiny::load_taesd_dir(empty.path(), true, Kind::Float, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("taesdxl_encoder.safetensors"), "{err}");

    // An encoder file given as the decoder: every mismatch is named.
    let err =
        AutoencoderTiny::load_taesd_files(None, Some(&dir.join("taesd_encoder.safetensors")), Kind::Float, Device::Cpu)
            .unwrap_err()
            .to_string();
    println!("{err}");
    assert!(err.contains("TAESD decoder") && err.contains("tensor `1.weight`"), "{err}");

    // A KL VAE folder is not an AutoencoderTiny: refused by its config's class name, and (config removed) by
    // its tensors.
    let err = format!(
        "{:#}",
        AutoencoderTiny::load_diffusers(&fixtures().join("models/sd1/vae"), Kind::Float, Device::Cpu).unwrap_err()
    );
    assert!(err.contains("`AutoencoderKL`, not AutoencoderTiny"), "{err}");
    let kl = tempfile::tempdir().expect("tempdir");
    std::fs::write(kl.path().join("config.json"), "{}").expect("write");
    std::fs::copy(
        fixtures().join("models/sd1/vae/diffusion_pytorch_model.safetensors"),
        kl.path().join("diffusion_pytorch_model.safetensors"),
    )
    .expect("copy");
    let err = AutoencoderTiny::load_diffusers(kl.path(), Kind::Float, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("missing tensor `encoder.layers.0.weight`") && err.contains("decoder.conv_in.weight"),
        "{err}"
    );
}
