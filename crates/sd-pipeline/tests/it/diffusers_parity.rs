//! End-to-end parity with diffusers' own pipelines on the tiny fixture models (fixtures/pipeline, made by
//! scripts/fixtures/gen_80_pipeline.py). Same model, prompt, sampler and seed must give the same image:
//! float image within 1e-3 (max abs), 8-bit image within 1/255 on ≥ 99.9 % of pixel values.

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, Mode};
use sd_test_support::fixtures;
use serde_json::Value;
use std::collections::HashMap;
use tch::{Kind, Tensor};

const FLOAT_TOL: f64 = 1e-3;
const MIN_FRACTION_WITHIN_ONE_LEVEL: f64 = 0.999;

fn load(model: &str) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    StableDiffusion::load(fixtures().join("models").join(model).to_str().unwrap(), opts).unwrap()
}

pub(crate) fn request(case: &Value) -> GenerationRequest {
    let s = |k: &str| case.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let f = |k: &str, d: f64| case.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let mut req = GenerationRequest::txt2img(&s("prompt"), f("width", 64.0) as i64, f("height", 64.0) as i64);
    req.negative_prompt = s("negative");
    req.steps = f("steps", 1.0) as usize;
    req.cfg_scale = f("cfg", 7.0);
    req.guidance_rescale = f("guidance_rescale", 0.0);
    req.sampler = s("sampler").parse().unwrap();
    req.seed = f("seed", 0.0) as u64;
    req.batch_size = f("batch_size", 1.0) as i64;
    req.clip_skip = f("clip_skip", 1.0) as usize;
    let dir = fixtures().join("pipeline");
    let img = |k: &str| sd_core::image_io::load_rgb(&dir.join(s(k))).unwrap();
    req.mode = match s("mode").as_str() {
        "img2img" => Mode::Img2Img { init: img("init"), strength: f("strength", 0.75) },
        "inpaint" => Mode::Inpaint {
            init: img("init"),
            mask: sd_core::image_io::load_luma(&dir.join(s("mask"))).unwrap(),
            strength: f("strength", 1.0),
        },
        _ => Mode::Txt2Img,
    };
    req
}

#[test]
fn every_case_matches_diffusers() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 14, "expected the full fixture set, found {} cases", cases.len());
    let mut models: HashMap<String, StableDiffusion> = HashMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let sd = models.entry(model.clone()).or_insert_with(|| load(&model));
        let req = request(case);
        let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let expected = Tensor::read_safetensors(fixtures().join(format!("pipeline/{name}.safetensors")))
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "image")
            .unwrap()
            .1;
        let ours = Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]);
        assert_eq!(ours.size(), expected.size(), "{name}: shape");
        let max = (&ours - &expected).abs().max().double_value(&[]);
        let q = |t: &Tensor| (t * 255.0).round();
        let within = (q(&ours) - q(&expected)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!("{name:28} max|Δ| = {max:.2e}   8-bit within 1 level: {:.4} %", within * 100.0);
        if max > FLOAT_TOL || within < MIN_FRACTION_WITHIN_ONE_LEVEL {
            failures.push(format!("{name}: max|Δ| {max:.3e} (tol {FLOAT_TOL}), within-1-level {within:.5}"));
        }
    }
    assert!(failures.is_empty(), "cases differing from diffusers:\n{}", failures.join("\n"));
}

#[test]
fn prompts_encoded_once_give_the_same_image_after_the_text_encoder_is_freed() {
    let mut sd = load("sd1");
    let mut req = GenerationRequest::txt2img("a red circle on a blue background", 64, 64);
    req.negative_prompt = "blurry".into();
    req.steps = 3;
    req.sampler = "Euler a".parse().unwrap();
    req.seed = 5;
    let whole = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap();
    let encoded = sd.encode_prompts(&req, &mut sd_pipeline::generate::quiet()).unwrap();
    sd.release_text_encoders();
    let split = sd.generate_encoded(&req, &encoded, &mut sd_pipeline::generate::quiet()).unwrap();
    assert!(whole.images[0].equal(&split.images[0]), "encoding first must not change the image");
    let err = sd.encode_prompts(&req, &mut sd_pipeline::generate::quiet()).err().expect("no encoders left").to_string();
    assert!(err.contains("released"), "{err}");
    let mut other = req.clone();
    other.prompt = "a green square".into();
    let err = sd
        .generate_encoded(&other, &encoded, &mut sd_pipeline::generate::quiet())
        .err()
        .expect("prompt mismatch")
        .to_string();
    assert!(err.contains("another request"), "{err}");
}

/// `sd generate`'s last batch: latents made, the UNet freed, then the decode; the same image as the one-call run,
/// and a request after the release is refused with a message naming it.
#[test]
fn decoding_after_the_unet_is_freed_gives_the_same_image() {
    let mut sd = load("sd1");
    let mut req = GenerationRequest::txt2img("a red circle on a blue background", 64, 64);
    req.steps = 3;
    req.seed = 5;
    req.batch_size = 2;
    let quiet = &mut sd_pipeline::generate::quiet();
    let whole = sd.generate(&req, quiet).unwrap();
    let encoded = sd.encode_prompts(&req, quiet).unwrap();
    let stage = sd_pipeline::stage::Stage { output_latents: true, ..Default::default() };
    let (mut split, latents) = sd.generate_stage(&req, &encoded, &stage, quiet).unwrap();
    assert!(split.images.is_empty(), "output_latents decodes nothing");
    sd.release_denoiser();
    assert!(sd.unet().is_err());
    sd.decode_generated(&mut split, &latents, quiet).unwrap();
    assert_eq!(split.images.len(), 2);
    for (a, b) in whole.images.iter().zip(&split.images) {
        assert!(a.equal(b), "decoding after the release must not change the image");
    }
    assert!(split.timings.decode_s > 0.0);
    let err = format!("{:#}", sd.generate_encoded(&req, &encoded, quiet).err().expect("no UNet left"));
    assert!(err.contains("UNet") && err.contains("released"), "{err}");
}

/// bf16 (the CPU default where it is native: channels-last, matmul/fused attention) against the f32 diffusers
/// reference of the same request. bf16 keeps ~3 significant digits and CFG 7 multiplies the difference of two
/// predictions by 7, so the bound is on the [0, 1] image: mean |Δ| ≤ 0.03, max |Δ| ≤ 0.25; and the fast paths
/// must not add error to plain bf16 (NCHW, SDPA): mean |Δ| within 1.5× of plain bf16's + 1e-3.
#[test]
fn bf16_pipeline_stays_close_to_the_f32_reference() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/cases.json")).unwrap()).unwrap();
    let load_bf16 = |plain: bool| {
        let mut opts = LoadOptions::cpu(Kind::BFloat16);
        opts.load_safety_checker = false;
        if plain {
            opts.channels_last = Some(false);
            opts.attention = sd_models::attention::AttentionMode::Sdpa;
        }
        StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap()
    };
    let (fast, plain) = (load_bf16(false), load_bf16(true));
    for name in ["sd1_Euler", "sd1_DDIM", "sd1_img2img"] {
        let case = cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("case {name}"));
        let expected =
            Tensor::read_safetensors(fixtures().join(format!("pipeline/{name}.safetensors"))).unwrap().remove(0).1;
        let err = |sd: &StableDiffusion| {
            let out = sd.generate(&request(case), &mut sd_pipeline::generate::quiet()).unwrap();
            let diff = (Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]).to_kind(Kind::Float) - &expected).abs();
            (diff.max().double_value(&[]), diff.mean(Kind::Float).double_value(&[]))
        };
        let ((max, mean), (pmax, pmean)) = (err(&fast), err(&plain));
        println!("{name} bf16 vs f32 reference: max |Δ| {max:.3e}, mean |Δ| {mean:.3e} (plain bf16: {pmax:.3e}, {pmean:.3e})");
        assert!(max <= 0.25 && mean <= 0.03, "{name}: bf16 max {max} mean {mean}");
        assert!(mean <= 1.5 * pmean + 1e-3, "{name}: the fast bf16 paths add error: mean {mean} vs plain {pmean}");
    }
}
