//! The SDXL refiner against diffusers (scripts/fixtures/gen_89_refiner.py): the tiny SDXL base with `denoising_end`
//! and the tiny refiner with `denoising_start` on its latents ("ensemble of experts"), for three samplers, and the
//! refiner alone as img2img. Held to the pipeline tolerances: the base's latents within 1e-3, the images within
//! 1e-3 as floats and within one 8-bit level on ≥ 99.9 % of values.

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, Mode};
use sd_pipeline::stage::Stage;
use sd_test_support::fixtures;
use serde_json::Value;
use tch::{Kind, Tensor};

fn reference(name: &str) -> Tensor {
    Tensor::read_safetensors(fixtures().join("refiner/refiner.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in the refiner fixture"))
        .1
}

fn load(name: &str) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    StableDiffusion::load(fixtures().join("models").join(name).to_str().unwrap(), opts).unwrap()
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

fn request(case: &Value) -> GenerationRequest {
    let n = |k: &str| case[k].as_f64().unwrap();
    let mut req = GenerationRequest::txt2img(case["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
    req.negative_prompt = case["negative"].as_str().unwrap().into();
    req.steps = n("steps") as usize;
    req.cfg_scale = n("cfg");
    req.seed = n("seed") as u64;
    req.sampler = case["sampler"].as_str().unwrap().parse().unwrap();
    req
}

#[test]
fn ensemble_of_experts_and_refiner_img2img_match_diffusers() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("refiner/cases.json")).unwrap()).unwrap();
    let base = load("sdxl");
    let refiner = load("sdxl-refiner-tiny");
    assert!(refiner.info.refiner && !base.info.refiner);
    let mut quiet = sd_pipeline::generate::quiet();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let req = request(case);
        if case["kind"] == "img2img" {
            let mut req = req;
            let init = sd_core::image_io::load_rgb(&fixtures().join(case["init"].as_str().unwrap())).unwrap();
            req.mode = Mode::Img2Img { init, strength: case["strength"].as_f64().unwrap() };
            let g = refiner.generate(&req, &mut quiet).unwrap();
            let (max, within) = compare(&g.images, &reference("img2img_image"));
            println!("refiner img2img: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
            assert!(max <= 1e-3 && within >= 0.999, "refiner img2img differs from diffusers");
            continue;
        }
        let switch = case["switch"].as_f64().unwrap();
        let enc = base.encode_prompts(&req, &mut quiet).unwrap();
        let renc = refiner.encode_prompts(&req, &mut quiet).unwrap();

        // The base's part alone: diffusers' output_type="latent" with denoising_end.
        let stage = Stage { denoising_end: Some(switch), output_latents: true, ..Default::default() };
        let (g, latents) = base.generate_stage(&req, &enc, &stage, &mut quiet).unwrap();
        assert!(g.images.is_empty());
        let expected = reference(&format!("{name}_latents"));
        let lmax = (&latents - &expected).abs().max().double_value(&[]);
        println!("{name}: base latents up to {switch}: {} steps, max|Δ| {lmax:.2e}", g.steps_done);
        assert!(lmax <= 1e-3, "{name}: the base's latents differ from diffusers' ({lmax})");

        // The whole ensemble.
        let g = base.generate_refined_encoded(&req, &enc, &refiner, &renc, switch, &mut quiet).unwrap();
        let (max, within) = compare(&g.images, &reference(&format!("{name}_image")));
        println!("{name}: ensemble max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
        assert!(max <= 1e-3 && within >= 0.999, "{name}: the ensemble differs from diffusers");
        let params = &g.refiner.as_ref().unwrap().params;
        assert!(params[0].0 == "Refiner" && params[0].1.starts_with("sdxl-refiner-tiny ["), "{params:?}");
        assert_eq!(params[1], ("Refiner switch at".to_string(), format!("{switch}")));
    }
}

#[test]
fn refiner_misuse_is_refused_with_reasons() {
    let base = load("sdxl");
    let refiner = load("sdxl-refiner-tiny");
    let mut quiet = sd_pipeline::generate::quiet();
    let req = GenerationRequest::txt2img("a fox", 64, 64);
    // The refiner alone cannot draw from noise.
    let err = refiner.generate(&req, &mut quiet).err().unwrap().to_string();
    assert!(err.contains("SDXL refiner") && err.contains("--init-image"), "{err}");
    let enc = base.encode_prompts(&req, &mut quiet).unwrap();
    let renc = refiner.encode_prompts(&req, &mut quiet).unwrap();
    for switch in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let err = base.generate_refined_encoded(&req, &enc, &refiner, &renc, switch, &mut quiet).err().unwrap();
        assert!(err.to_string().contains("strictly between 0 and 1"), "{switch}: {err}");
    }
    // A base model given as the refiner, and a refiner given as the base.
    let err = sd_pipeline::refiner::check_refiner_folder(&base, &base.dir).unwrap_err().to_string();
    assert!(err.contains("not an SDXL refiner"), "{err}");
    let err = sd_pipeline::refiner::check_refiner_folder(&refiner, &refiner.dir).unwrap_err().to_string();
    assert!(err.contains("not an SDXL base"), "{err}");
    let sd1 = load("sd1");
    let err = sd_pipeline::refiner::check_refiner_folder(&sd1, &refiner.dir).unwrap_err().to_string();
    assert!(err.contains("not an SDXL base"), "{err}");
    // A refiner whose latents have other channels than the base's: refused from its configs, before its weights.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("refiner-8ch");
    copy_dir(&fixtures().join("models/sdxl-refiner-tiny"), &copy);
    let vae_cfg = copy.join("vae/config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&vae_cfg).unwrap()).unwrap();
    cfg["latent_channels"] = 8.into();
    std::fs::write(&vae_cfg, cfg.to_string()).unwrap();
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let err = sd_pipeline::refiner::load_refiner(&base, copy.to_str().unwrap(), opts).err().unwrap().to_string();
    assert!(err.contains("8-channel latents") && err.contains("4"), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
