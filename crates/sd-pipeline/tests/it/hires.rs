//! The hires fix against its reference (scripts/fixtures/gen_87_hires.py): diffusers' txt2img at 32 px, PIL's
//! Lanczos enlargement to 64 px, diffusers' img2img from it with the same seed. Each pass and the whole fix are held
//! to the pipeline tolerances (float within 1e-3, 8-bit within one level on ≥ 99.9 % of values; measured: ~1e-6),
//! and the enlargement must equal Pillow's byte for byte.

use sd_pipeline::hires::{Hires, LatentUpscale, Upscaler};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, Mode};
use sd_test_support::fixtures;
use serde_json::Value;
use tch::{Kind, Tensor};

fn reference(name: &str) -> Tensor {
    Tensor::read_safetensors(fixtures().join("pipeline/hires.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap()
        .1
}

/// (max |Δ| on floats, fraction of 8-bit values within one level)
fn compare(ours: &[Tensor], expected: &Tensor) -> (f64, f64) {
    let ours = Tensor::stack(ours, 0).permute([0, 2, 3, 1]);
    assert_eq!(ours.size(), expected.size());
    let max = (&ours - expected).abs().max().double_value(&[]);
    let q = |t: &Tensor| (t * 255.0).round();
    let within = (q(&ours) - q(expected)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    (max, within)
}

#[test]
fn hires_fix_matches_the_diffusers_composition() {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/hires.json")).unwrap()).unwrap();
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap();
    let n = |k: &str| case[k].as_f64().unwrap();
    let mut req = GenerationRequest::txt2img(case["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
    req.negative_prompt = case["negative"].as_str().unwrap().into();
    req.steps = n("steps") as usize;
    req.cfg_scale = n("cfg");
    req.seed = n("seed") as u64;
    req.sampler = "Euler".parse().unwrap();
    let hires = Hires { steps: Some(n("hires_steps") as usize), ..Hires::new(n("scale"), n("strength")) };
    let mut quiet = sd_pipeline::generate::quiet();
    let enc = sd.encode_prompts(&req, &mut quiet).unwrap();

    // First pass: the ordinary pipeline.
    let first = sd.generate_encoded(&req, &enc, &mut quiet).unwrap();
    let (max, within) = compare(&first.images, &reference("first"));
    println!("first pass: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
    assert!(max <= 1e-3 && within >= 0.999, "first pass differs from diffusers");

    // Second pass from the reference's enlarged image: the same img2img as diffusers'.
    let upscaled = sd_core::image_io::load_rgb(&fixtures().join("pipeline/hires_upscaled.png")).unwrap();
    let mut second = req.clone();
    second.width = 64;
    second.height = 64;
    second.steps = hires.steps.unwrap();
    second.mode = Mode::Img2Img { init: upscaled.clone(), strength: hires.strength };
    let g2 = sd.generate_encoded(&second, &enc, &mut quiet).unwrap();
    let (max, within) = compare(&g2.images, &reference("final"));
    println!("second pass from PIL's enlargement: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
    assert!(max <= 1e-3 && within >= 0.999, "second pass differs from diffusers");

    // Our Lanczos is Pillow's, byte for byte.
    let small = sd_core::image_io::tensor_to_rgb(&first.images[0], sd_core::image_io::Range::Unit).unwrap();
    let ours = sd_core::resample::lanczos_rgb(&small, 64, 64).unwrap();
    assert!(ours.as_raw() == upscaled.as_raw(), "the enlargement differs from Pillow's Lanczos");

    // The whole fix, through its own entry point.
    let all = sd.generate_hires_encoded(&req, &enc, &hires, &mut quiet).unwrap();
    assert_eq!(all.images[0].size(), vec![3, 64, 64]);
    let (max, within) = compare(&all.images, &reference("final"));
    println!("whole hires fix: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
    assert!(max <= 1e-3 && within >= 0.999, "hires fix differs from the diffusers composition: {max} {within}");
    let params = &all.hires.as_ref().unwrap().params;
    assert_eq!(params[0], ("Hires upscale".to_string(), "2".to_string()));
    assert_eq!(all.steps_done, req.steps + (hires.steps.unwrap() as f64 * hires.strength) as usize);
}

#[test]
fn hires_settings_are_checked() {
    let base = Hires::new(2.0, 0.5);
    assert_eq!(base.target(512, 768).unwrap(), (1024, 1536));
    assert_eq!(Hires { scale: 1.5, ..base.clone() }.target(100, 100).unwrap(), (144, 144));
    assert_eq!(Hires { resize: Some((1000, 700)), ..base.clone() }.target(8, 8).unwrap(), (1000, 696));
    assert!(Hires { scale: 9.0, ..base.clone() }.validate().is_err());
    assert!(Hires { strength: 0.0, ..base.clone() }.validate().is_err());
    assert!(Hires { steps: Some(0), ..base.clone() }.validate().is_err());
    assert_eq!("Latent".parse::<Upscaler>().unwrap(), Upscaler::Latent(LatentUpscale::Bilinear));
    assert_eq!(
        " latent (Bicubic Antialiased) ".parse::<Upscaler>().unwrap(),
        Upscaler::Latent(LatentUpscale::BicubicAntialiased)
    );
    assert_eq!("None".parse::<Upscaler>().unwrap(), Upscaler::Lanczos);
    for l in LatentUpscale::ALL {
        assert_eq!(l.a1111_name().parse::<Upscaler>().unwrap(), Upscaler::Latent(l));
    }
    // An unknown name is refused with the list of the valid ones.
    let err = "R-ESRGAN 4x+".parse::<Upscaler>().unwrap_err().to_string();
    for name in Upscaler::names() {
        assert!(err.contains(&format!("\"{name}\"")), "{err}");
    }
}

fn latent_reference(name: &str) -> Tensor {
    Tensor::read_safetensors(fixtures().join("pipeline/hires_latent.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap()
        .1
}

/// The latent upscalers against scripts/fixtures/gen_86_hires_latent.py: diffusers' txt2img latents resized with
/// `torch.nn.functional.interpolate` in A1111's mode for each name, then diffusers' img2img from those latents. The
/// resize must equal torch's (max |Δ| ≤ 1e-5: the same kernels), the pictures the pipeline tolerances.
#[test]
fn latent_hires_fix_matches_the_diffusers_composition() {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/hires_latent.json")).unwrap()).unwrap();
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap();
    let n = |k: &str| case[k].as_f64().unwrap();
    let mut req = GenerationRequest::txt2img(case["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
    req.negative_prompt = case["negative"].as_str().unwrap().into();
    req.steps = n("steps") as usize;
    req.cfg_scale = n("cfg");
    req.seed = n("seed") as u64;
    req.sampler = "Euler".parse().unwrap();
    let mut quiet = sd_pipeline::generate::quiet();
    let enc = sd.encode_prompts(&req, &mut quiet).unwrap();

    let stage = sd_pipeline::stage::Stage { output_latents: true, ..Default::default() };
    let (_, first) = sd.generate_stage(&req, &enc, &stage, &mut quiet).unwrap();
    let lmax = (&first - latent_reference("first_latents")).abs().max().double_value(&[]);
    println!("first pass latents: max|Δ| {lmax:.2e}");
    assert!(lmax <= 1e-3);

    for c in case["cases"].as_array().unwrap() {
        let key = c["key"].as_str().unwrap();
        let upscaler: Upscaler = c["upscaler"].as_str().unwrap().parse().unwrap();
        let Upscaler::Latent(mode) = upscaler else { panic!("{upscaler:?}") };
        // The resize alone, from the reference's own first-pass latents.
        let expected_up = latent_reference(&format!("{key}_upscaled"));
        let s = expected_up.size();
        let up = mode.resize(&latent_reference("first_latents"), s[2], s[3]).unwrap();
        let umax = (&up - &expected_up).abs().max().double_value(&[]);
        assert!(umax <= 1e-5, "{}: resize differs from torch's interpolate ({umax})", mode.a1111_name());

        let mut hires =
            Hires { steps: Some(n("hires_steps") as usize), upscaler, ..Hires::new(n("scale"), n("strength")) };
        let hr_sampler = c["hr_sampler"].as_str().unwrap();
        if hr_sampler != "Euler" {
            hires.sampler = Some(hr_sampler.parse().unwrap());
        }
        hires.prompt = Some(c["hr_prompt"].as_str().unwrap().to_string());
        hires.negative_prompt = Some(c["hr_negative"].as_str().unwrap().to_string());
        let g = sd.generate_hires_encoded(&req, &enc, &hires, &mut quiet).unwrap();
        let (max, within) = compare(&g.images, &latent_reference(&format!("{key}_final")));
        println!(
            "{}: resize max|Δ| {umax:.1e}; final max|Δ| {max:.2e}, within one level {:.4} %",
            mode.a1111_name(),
            within * 100.0
        );
        assert!(max <= 1e-3 && within >= 0.999, "{}: differs from the diffusers composition", mode.a1111_name());
        let params = &g.hires.as_ref().unwrap().params;
        let get = |k: &str| params.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone());
        assert_eq!(get("Hires upscaler").as_deref(), Some(mode.a1111_name()));
        assert_eq!(g.sampler_label, "Euler", "the first pass's sampler stays the image's Sampler");
        if hr_sampler != "Euler" {
            assert_eq!(get("Hires sampler").as_deref(), Some(hr_sampler));
            assert_eq!(get("Hires prompt"), hires.prompt);
            assert_eq!(get("Hires negative prompt"), hires.negative_prompt);
        } else {
            assert!(get("Hires sampler").is_none() && get("Hires prompt").is_none(), "{params:?}");
        }
    }
}
