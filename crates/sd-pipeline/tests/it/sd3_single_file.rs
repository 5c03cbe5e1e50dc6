//! `--model sd3.safetensors`: a single-file SD3 / SD3.5 checkpoint (fixtures/sd3_single_file/, from
//! scripts/fixtures/gen_94_sd3_single_file.py: the tiny SD3.5-Medium-like pipeline in the original Stability layout,
//! with CLIP-L, CLIP-G and T5) is converted once into the cache through the `sd convert` mapping and renders what
//! diffusers' `StableDiffusion3Pipeline.from_single_file` renders from the same file and seed: final latents within
//! 1e-4, image within 1e-3 (float), the tolerances of the SD3 folder pipeline tests. Measured: see the printed errors
//! (README's parity table). A file without text encoders converts, and loading it names what is missing.

use super::sd3_pipeline::case_request;
use sd_pipeline::sd3::Sd3Pipeline;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_single_file"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn single_file_sd3_converts_once_and_renders_diffusers_latents() {
    let cache = tempfile::tempdir().unwrap();
    // Only test in this binary, so changing the process environment cannot race another test.
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    let file = dir().join("sd3_tiny.safetensors");
    assert!(sd_pipeline::single_file::is_sd3_file(&file));
    let folder = sd_pipeline::single_file::converted_folder(&file, Some(&dir().join("config"))).unwrap();
    let pipe = Sd3Pipeline::load(&folder, Kind::Float, Device::Cpu, false).unwrap();
    assert!(pipe.has_t5());

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap();
    let (images, latents) = pipe.generate(&case_request(&expected["case"])).unwrap();
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir().join("run.safetensors")).unwrap().into_iter().collect();
    let dl = max_abs(&latents, &r["latents"]);
    let di = max_abs(&images.permute([0, 2, 3, 1]), &r["image"]);
    println!(
        "single-file SD3: latents err {dl:.2e} (max |{:.3}|), image err {di:.2e}",
        r["latents"].abs().max().double_value(&[])
    );
    assert!(dl <= 1e-4, "latents off by {dl}");
    assert!(di <= 1e-3, "image off by {di}");

    // The conversion is cached: a second call reuses the folder.
    assert_eq!(sd_pipeline::single_file::converted_folder(&file, None).unwrap(), folder);
    assert_eq!(std::fs::read_dir(cache.path().join("sd-rs/converted")).unwrap().count(), 1);

    // A bare MMDiT + VAE without text encoders converts; loading it says which encoders SD3 needs.
    let plain = dir().join("sd3_plain.safetensors");
    let folder = sd_pipeline::single_file::converted_folder(&plain, Some(&dir().join("plain_config"))).unwrap();
    assert!(folder.join("transformer/config.json").is_file() && folder.join("vae/config.json").is_file());
    let e = format!("{:#}", Sd3Pipeline::load(&folder, Kind::Float, Device::Cpu, true).err().unwrap());
    assert!(e.contains("text_encoder/") && e.contains("CLIP-L"), "{e}");
}

/// A plain float8 file (fixtures/sd3_fp8/plain.safetensors, from scripts/fixtures/gen_94_sd3_single_file_fp8.py: the same file
/// with the MMDiT and T5 matrix weights in float8_e4m3fn) converts into a folder that keeps them float8; loaded at
/// f32 it renders what diffusers renders from the float8 file: latents within 1e-4, image within 1e-3.
#[test]
fn float8_file_renders_diffusers_latents() {
    let fp8 = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_fp8"));
    let src = sd_models::convert::open(&fp8.join("plain.safetensors")).unwrap();
    let plan = sd_models::convert::sd3::plan(src.as_ref(), Some(&dir().join("config")), false).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("sd3-fp8");
    let opts = sd_models::convert::writer::WriteOptions {
        dtype: None,
        overwrite: false,
        config_dir: Some(dir().join("config")),
        vocab: None,
        pipeline: true,
    };
    sd_models::convert::writer::write_sd3_folder(&plan, src.as_ref(), &folder, &opts, |_, _, _| {}).unwrap();
    let pipe = Sd3Pipeline::load(&folder, Kind::Float, Device::Cpu, false).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fp8.join("expected.json")).unwrap()).unwrap();
    let (images, latents) = pipe.generate(&case_request(&expected["case"])).unwrap();
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fp8.join("run.safetensors")).unwrap().into_iter().collect();
    let dl = max_abs(&latents, &r["latents"]);
    let di = max_abs(&images.permute([0, 2, 3, 1]), &r["image"]);
    println!("float8 SD3 file: latents err {dl:.2e}, image err {di:.2e}");
    assert!(dl <= 1e-4, "latents off by {dl}");
    assert!(di <= 1e-3, "image off by {di}");
}
