//! SD3's flow-matching samplers end to end against diffusers' StableDiffusion3Pipeline with its scheduler swapped
//! (fixtures from scripts/fixtures/gen_98_sd3_samplers.py on the tiny SD3 model of gen_82, without T5):
//! flow-heun (FlowMatchHeunDiscreteScheduler), flow-dpmpp-2m (DPMSolverMultistepScheduler over flow sigmas),
//! flow-euler with `use_dynamic_shifting` (the pipeline's `calculate_shift` from the latent size, non-square), and
//! flow-euler-a against the script's re-implementation of ComfyUI's `sample_euler_ancestral_RF`, whose step noise
//! follows the initial latents on the pipeline's generator (η 1 and 0.5, with and without the dynamic shift).
//! Final latents within 1e-4 absolute, images within 1e-3 (float), as the other SD3 parity tests; measured worst
//! flow-dpmpp-2m latents 1.3e-6 (of up to 4.4), image 7.2e-7;
//! the other five cases bit-identical.

use sd_pipeline::sd3::{Sd3Pipeline, Sd3Request};
use sd_test_support::{fixtures, max_abs_diff};
use tch::{Device, Kind, Tensor};

#[test]
fn flow_samplers_match_diffusers() {
    let dir = fixtures().join("sd3_samplers");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("gen_98_sd3_samplers.py"))
            .unwrap();
    let mut pipe = Sd3Pipeline::load(&fixtures().join("models/sd3"), Kind::Float, Device::Cpu, true).unwrap();
    let own = pipe.scheduler_config.clone();
    let mut worst = (0f64, 0f64);
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        pipe.scheduler_config = own.clone();
        if c["dynamic"].as_bool().unwrap() {
            pipe.scheduler_config["use_dynamic_shifting"] = serde_json::json!(true);
        }
        let mut req = Sd3Request::new(c["prompt"].as_str().unwrap());
        req.negative_prompt = c["negative_prompt"].as_str().unwrap().into();
        req.sampler = c["sampler"].as_str().unwrap().parse().unwrap();
        req.eta = c["eta"].as_f64();
        req.steps = c["num_inference_steps"].as_u64().unwrap() as usize;
        req.guidance_scale = c["guidance_scale"].as_f64().unwrap();
        req.width = c["width"].as_i64().unwrap();
        req.height = c["height"].as_i64().unwrap();
        req.seed = c["seed"].as_u64().unwrap();
        req.max_sequence_length = 16;
        let (images, latents) = pipe.generate(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let r: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap().into_iter().collect();
        let dl = max_abs_diff(&latents, &r["latents"]);
        let di = max_abs_diff(&images.permute([0, 2, 3, 1]), &r["image"]);
        println!(
            "{name:16} latents max|{:.3}| err {dl:.2e}   image err {di:.2e}",
            r["latents"].abs().max().double_value(&[])
        );
        assert!(dl <= 1e-4, "{name}: latents off by {dl}");
        assert!(di <= 1e-3, "{name}: image off by {di}");
        worst = (worst.0.max(dl), worst.1.max(di));
    }
    println!("worst: latents {:.2e}, images {:.2e}", worst.0, worst.1);
    // the dynamic shift moves the result: the same request with the model's static shift differs
    pipe.scheduler_config = own;
    let c = &cases["cases"].as_array().unwrap().iter().find(|c| c["name"] == "dynamic").unwrap();
    let mut req = Sd3Request::new(c["prompt"].as_str().unwrap());
    req.negative_prompt = c["negative_prompt"].as_str().unwrap().into();
    (req.width, req.height, req.steps, req.seed, req.guidance_scale) = (24, 16, 5, 35, 5.0);
    req.max_sequence_length = 16;
    let (_, plain) = pipe.generate(&req).unwrap();
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("dynamic.safetensors")).unwrap().into_iter().collect();
    assert!(max_abs_diff(&plain, &r["latents"]) > 1e-2, "use_dynamic_shifting changed nothing");
}

#[test]
fn samplers_of_the_other_kind_are_refused() {
    let pipe = Sd3Pipeline::load(&fixtures().join("models/sd3"), Kind::Float, Device::Cpu, true).unwrap();
    let mut req = Sd3Request::new("x");
    (req.width, req.height, req.steps) = (16, 16, 2);
    for name in ["euler", "dpmpp-2m", "DPM++ 2M SDE Karras"] {
        req.sampler = name.parse().unwrap();
        let e = format!("{:#}", pipe.check(&req).unwrap_err());
        assert!(e.contains("is for UNet models") && e.contains("flow-heun, flow-dpmpp-2m"), "{name}: {e}");
    }
    for name in ["flow-euler", "flow-heun", "flow-dpmpp-2m", "flow-euler-a", "default"] {
        req.sampler = name.parse().unwrap();
        pipe.check(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

#[test]
fn flow_samplers_are_refused_on_a_unet_model() {
    let mut opts = sd_pipeline::loader::LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let dir = fixtures().join("models/sd1");
    let sd = sd_pipeline::loader::StableDiffusion::load(dir.to_str().unwrap(), opts).unwrap();
    let mut req = sd_pipeline::request::GenerationRequest::txt2img("a red square", 64, 64);
    req.steps = 2;
    for name in ["flow-euler", "flow-heun", "flow-dpmpp-2m", "flow-euler-a"] {
        req.sampler = name.parse().unwrap();
        let e = format!("{:#}", sd.generate(&req, &mut sd_pipeline::generate::quiet()).err().unwrap());
        assert!(
            e.contains(&format!("sampler {name} is for flow-matching models (sd3), not for this sd1 model")),
            "{e}"
        );
    }
}
