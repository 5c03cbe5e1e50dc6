//! ControlNet in the pipeline against diffusers' StableDiffusionControlNetPipeline (fixtures/controlnet, from
//! scripts/fixtures/gen_88_controlnet.py): the tiny SD1 model with a tiny random ControlNet, CFG 7, Euler, a
//! control picture, scale 1 over all steps and scale 0.7 over the window 0.2–0.8. Pipeline tolerances: float image
//! within 1e-3, 8-bit within one level on ≥ 99.9 % of values.

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{ControlInput, GenerationRequest};
use sd_test_support::fixtures;
use serde_json::Value;
use tch::{Kind, Tensor};

#[test]
fn controlnet_pipeline_matches_diffusers() {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.controlnets = vec![fixtures().join("models/controlnet-sd1")];
    let sd = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("controlnet/cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 2);
    let control = sd_core::image_io::load_rgb(&fixtures().join("controlnet/control.png")).unwrap();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let n = |k: &str| c[k].as_f64().unwrap();
        let mut req = GenerationRequest::txt2img(c["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
        req.negative_prompt = c["negative"].as_str().unwrap().into();
        req.steps = n("steps") as usize;
        req.cfg_scale = n("cfg");
        req.seed = n("seed") as u64;
        req.sampler = "Euler".parse().unwrap();
        let mut unit = ControlInput::new("controlnet-sd1", control.clone());
        (unit.scale, unit.start, unit.end) = (n("scale"), n("start"), n("end"));
        req.control = vec![unit];
        req.validate(sd.vae_scale_factor()).unwrap();
        let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap();
        let expected = Tensor::read_safetensors(fixtures().join(format!("controlnet/pipeline_{name}.safetensors")))
            .unwrap()
            .remove(0)
            .1;
        let ours = Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]);
        let max = (&ours - &expected).abs().max().double_value(&[]);
        let q = |t: &Tensor| (t * 255.0).round();
        let within = (q(&ours) - q(&expected)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!("{name}: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
        assert!(max <= 1e-3 && within >= 0.999, "{name}: differs from diffusers ({max}, {within})");
        // Without the control picture the image differs: the ControlNet really steers.
        let mut plain = req.clone();
        plain.control.clear();
        let p = sd.generate(&plain, &mut sd_pipeline::generate::quiet()).unwrap();
        assert!((Tensor::stack(&p.images, 0).permute([0, 2, 3, 1]) - &expected).abs().max().double_value(&[]) > 1e-2);
    }
}
