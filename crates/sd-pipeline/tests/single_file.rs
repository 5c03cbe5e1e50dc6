//! `--model checkpoint.safetensors`: a single-file checkpoint loads directly (converted once into the cache through
//! the `sd convert` mapping) and generates the diffusers reference image of the original folder (float ≤ 1e-3).
//! A binary of its own, outside the shared `it` one: it points the process's cache (XDG_CACHE_HOME) at a temporary
//! folder and counts the conversions there, which other tests' loads would race on.

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use sd_test_support::fixtures;
use tch::{Kind, Tensor};

#[test]
fn single_file_checkpoint_loads_directly_and_matches_diffusers() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    let ckpt = fixtures().join("convert/sd1.safetensors");
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.config_dir = Some(fixtures().join("models/sd1"));
    let sd = StableDiffusion::load(ckpt.to_str().unwrap(), opts.clone()).unwrap();
    assert_eq!(sd.name, "sd1");
    assert_eq!(sd.source_file.as_deref(), Some(ckpt.as_path()));

    let mut req = GenerationRequest::txt2img("a red circle on a blue background", 64, 64);
    req.negative_prompt = "blurry, low quality".into();
    req.sampler = "Euler a".parse().unwrap();
    req.steps = 6;
    req.seed = 42;
    let image =
        Tensor::stack(&sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap().images, 0).permute([0, 2, 3, 1]);
    let expected = Tensor::read_safetensors(fixtures().join("pipeline/sd1_Euler_a.safetensors")).unwrap().remove(0).1;
    let max = (&image - &expected).abs().max().double_value(&[]);
    assert!(max <= 1e-3, "max|Δ| = {max:e}");

    // The conversion is cached: one folder, reused by a second load.
    let converted: Vec<_> = std::fs::read_dir(cache.path().join("sd-rs/converted")).unwrap().collect();
    assert_eq!(converted.len(), 1);
    StableDiffusion::load(ckpt.to_str().unwrap(), opts).unwrap();
    assert_eq!(std::fs::read_dir(cache.path().join("sd-rs/converted")).unwrap().count(), 1);
}
