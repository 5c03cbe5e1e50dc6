//! IP-Adapter in the pipeline against diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline with
//! `load_ip_adapter` (fixtures/ip_adapter, from scripts/fixtures/gen_94_ip_adapter.py): the tiny SD1 and SDXL
//! models, original-layout adapter files (base, plus, full-face; SDXL base and plus) with the tiny image encoder
//! beside them, Euler, CFG on and off. Tolerances: final latents within 1e-4, float images within 1e-3, 8-bit
//! within one level on ≥ 99.9 % of values (measured worst printed).

use sd_pipeline::generate::{Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, IpAdapterInput};
use sd_test_support::fixtures;
use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn load(model: &str) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    StableDiffusion::load(fixtures().join("models").join(model).to_str().unwrap(), opts).unwrap()
}

fn adapter(file: &str) -> PathBuf {
    fixtures().join("ip_adapter/models").join(file)
}

fn picture() -> image::RgbImage {
    sd_core::image_io::load_rgb(&fixtures().join("ip_adapter/picture.png")).unwrap()
}

/// The images and the latents after the last step.
fn run(sd: &StableDiffusion, req: &GenerationRequest) -> (Tensor, Tensor) {
    let mut last = None;
    let mut on_event = |e: Event<'_>| {
        if let Event::Step(s) = e {
            last = Some(s.latents.shallow_clone());
        }
        Flow::Continue
    };
    let out = sd.generate(req, &mut on_event).unwrap();
    (Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]), last.unwrap())
}

#[test]
fn ip_adapter_pipelines_match_diffusers() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ip_adapter/cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 6);
    let mut models: Vec<(String, StableDiffusion)> = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let model = c["model"].as_str().unwrap();
        if !models.iter().any(|(m, _)| m == model) {
            models.push((model.to_string(), load(model)));
        }
        let sd = &mut models.iter_mut().find(|(m, _)| m == model).unwrap().1;
        let adapter_name = sd.load_ip_adapter(&adapter(c["adapter"].as_str().unwrap()), None).unwrap();
        let n = |k: &str| c[k].as_f64().unwrap();
        let mut req = GenerationRequest::txt2img(c["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
        req.negative_prompt = c["negative"].as_str().unwrap().into();
        req.steps = n("steps") as usize;
        req.cfg_scale = n("cfg");
        req.seed = n("seed") as u64;
        req.sampler = "Euler".parse().unwrap();
        req.ip_adapters = vec![IpAdapterInput::new(&adapter_name, picture(), n("scale"))];
        let (images, latents) = run(sd, &req);
        let expected: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(fixtures().join(format!("ip_adapter/case_{name}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let dl = (&latents - &expected["latents"]).abs().max().double_value(&[]);
        let di = (&images - &expected["image"]).abs().max().double_value(&[]);
        let q = |t: &Tensor| (t * 255.0).round();
        let within =
            (q(&images) - q(&expected["image"])).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!("{name}: latents max|Δ| {dl:.2e}, image max|Δ| {di:.2e}, within one level {:.3} %", within * 100.0);
        assert!(dl <= 1e-4 && di <= 1e-3 && within >= 0.999, "{name}: differs from diffusers ({dl}, {di}, {within})");
        // Without the adapter the result differs: the picture really steers.
        let mut plain = req.clone();
        plain.ip_adapters.clear();
        let (_, plain_latents) = run(sd, &plain);
        assert!((plain_latents - &expected["latents"]).abs().max().double_value(&[]) > 1e-3, "{name}: no effect");
    }
}

#[test]
fn scale_zero_is_the_plain_pipeline() {
    let mut sd = load("sd1");
    let name = sd.load_ip_adapter(&adapter("ip-adapter-plus_sd15.safetensors"), None).unwrap();
    let mut req = GenerationRequest::txt2img("a red circle", 32, 32);
    req.steps = 2;
    req.sampler = "Euler".parse().unwrap();
    let plain = run(&sd, &req).1;
    req.ip_adapters = vec![IpAdapterInput::new(&name, picture(), 0.0)];
    assert_eq!((run(&sd, &req).1 - plain).abs().max().double_value(&[]), 0.0);
}

#[test]
fn bad_adapters_and_requests_are_clear_errors() {
    let mut sd = load("sd1");
    let err = |r: anyhow::Result<String>| format!("{:#}", r.unwrap_err());
    let e = err(sd.load_ip_adapter(&adapter("ip-adapter_sdxl.safetensors"), None));
    assert!(e.contains("cross_attention_dim is 16") && e.contains("another base model"), "{e}");
    let e = err(sd.load_ip_adapter(&adapter("missing.safetensors"), None));
    assert!(e.contains("no such file") && e.contains("IP-Adapter weight file"), "{e}");
    let e = err(sd.load_ip_adapter(&adapter("image_encoder/model.safetensors"), None));
    assert!(e.contains("is not an IP-Adapter file"), "{e}");
    let e = err(sd.load_ip_adapter(&adapter("ip-adapter_sd15.safetensors"), Some(&fixtures().join("models/sd1"))));
    assert!(e.contains("config.json is missing") || e.contains("image encoder"), "{e}");
    assert!(sd.ip_adapters.is_empty(), "a failed load leaves nothing behind");

    let name = sd.load_ip_adapter(&adapter("ip-adapter_sd15.safetensors"), None).unwrap();
    assert_eq!(name, "ip-adapter_sd15");
    let mut req = GenerationRequest::txt2img("a red circle", 32, 32);
    req.steps = 1;
    req.ip_adapters = vec![IpAdapterInput::new(&name, picture(), 11.0)];
    let e = format!("{:#}", req.validate(8).unwrap_err());
    assert!(e.contains("scale must be within [0, 10]"), "{e}");
    req.ip_adapters = vec![IpAdapterInput::new("nope", picture(), 1.0)];
    let e = match sd.generate(&req, &mut sd_pipeline::generate::quiet()) {
        Ok(_) => panic!("an adapter that is not loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("IP-Adapter \"nope\", which is not loaded"), "{e}");
    req.ip_adapters = vec![IpAdapterInput::new(&name, picture(), 1.0); 9];
    let e = format!("{:#}", req.validate(8).unwrap_err());
    assert!(e.contains("IP-Adapters limit of 8"), "{e}");
}

/// A server holds encoders of several widths (ViT-H, ViT-bigG): each adapter takes the first candidate whose output
/// it fits, read from the candidates' configs, and gives exactly the image of the encoder named alone. A single
/// encoder that does not fit is refused, naming its width and the adapter's.
#[test]
fn the_first_encoder_that_fits_is_chosen() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("wider_encoder");
    std::fs::create_dir(&other).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter("image_encoder/config.json")).unwrap()).unwrap();
    let width = |v: &Value, k: &str| v.get(k).or(v["vision_config"].get(k)).and_then(|x| x.as_i64()).unwrap();
    let (proj, hidden) = (width(&cfg, "projection_dim"), width(&cfg, "hidden_size"));
    // Only the config is read for a candidate that does not fit, so no weights are needed.
    cfg["projection_dim"] = (proj * 2).into();
    cfg["hidden_size"] = (hidden * 2).into();
    std::fs::write(other.join("config.json"), cfg.to_string()).unwrap();
    let base = adapter("ip-adapter_sd15.safetensors");

    let mut sd = load("sd1");
    let e = format!("{:#}", sd.load_ip_adapter(&base, Some(&other)).unwrap_err());
    assert!(e.contains("no image encoder fits") && e.contains(&format!("makes {}-wide image_embeds", proj * 2)), "{e}");
    assert!(e.contains(&format!("takes {proj}-wide")), "{e}");
    assert!(sd.ip_adapters.is_empty() && sd.image_encoders.is_empty(), "a refused candidate is never loaded");
    let name = sd.load_ip_adapter_among(&base, &[other.clone(), adapter("image_encoder")]).unwrap();
    assert_eq!(sd.image_encoders.len(), 1);
    assert_eq!(sd.image_encoders[0].path, adapter("image_encoder"));

    let mut alone = load("sd1");
    let alone_name = alone.load_ip_adapter(&base, Some(&adapter("image_encoder"))).unwrap();
    let mut req = GenerationRequest::txt2img("a red circle", 32, 32);
    req.steps = 2;
    req.sampler = "Euler".parse().unwrap();
    req.ip_adapters = vec![IpAdapterInput::new(&name, picture(), 0.8)];
    let chosen = run(&sd, &req).1;
    req.ip_adapters = vec![IpAdapterInput::new(&alone_name, picture(), 0.8)];
    assert_eq!((run(&alone, &req).1 - chosen).abs().max().double_value(&[]), 0.0);
}
