//! A single-file checkpoint, converted by `sd convert`, generates exactly the image diffusers' own pipeline
//! generates from the original folder (fixtures/pipeline/sd1_Euler_a, made by gen_80_pipeline.py): the conversion
//! is bit-exact, so the tolerance is the pipeline parity bound (float image ≤ 1e-3).

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use sd_test_support::fixtures;
use std::process::Command;
use tch::{Kind, Tensor};

#[test]
fn converted_checkpoint_generates_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sd1-converted");
    let status = Command::new(env!("CARGO_BIN_EXE_sd"))
        .arg("convert")
        .arg(fixtures().join("convert/sd1.safetensors"))
        .arg("--output")
        .arg(&out)
        .arg("--config-dir")
        .arg(fixtures().join("models/sd1"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(out.to_str().unwrap(), opts).unwrap();
    let mut req = GenerationRequest::txt2img("a red circle on a blue background", 64, 64);
    req.negative_prompt = "blurry, low quality".into();
    req.sampler = "Euler a".parse().unwrap();
    req.steps = 6;
    req.cfg_scale = 7.0;
    req.seed = 42;
    let image =
        Tensor::stack(&sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap().images, 0).permute([0, 2, 3, 1]);
    let expected = Tensor::read_safetensors(fixtures().join("pipeline/sd1_Euler_a.safetensors")).unwrap().remove(0).1;
    let max = (&image - &expected).abs().max().double_value(&[]);
    assert!(max <= 1e-3, "converted model differs from the diffusers reference image: max|Δ| = {max:e}");
    assert_eq!(image.kind(), Kind::Float);
}
