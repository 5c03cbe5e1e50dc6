//! LoRA and textual inversion end to end on the tiny SD1 model vs diffusers (fixtures/lora_pipeline, made by
//! scripts/fixtures/gen_85_lora_pipeline.py): `<lora:tiny-kohya:0.8>` in the prompt (resolved in a LoRA folder) gives
//! exactly the image of the same file given as a load option at 0.8, and both equal diffusers'
//! `load_lora_weights` + `fuse_lora(lora_scale=0.8)`; an embedding named in the prompt equals diffusers'
//! `load_textual_inversion`. Tolerances as diffusers_parity: float image max |Δ| ≤ 1e-3, 8-bit within 1/255 on
//! ≥ 99.9 % of values.

use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::loras::{resolve_lora, strip_lora_tags};
use sd_pipeline::request::GenerationRequest;
use sd_test_support::fixtures;
use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn case(name: &str) -> Value {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora_pipeline/cases.json")).unwrap()).unwrap();
    cases.into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("case {name} missing from cases.json"))
}

fn load(loras: Vec<(PathBuf, f64)>) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.loras = loras;
    StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap()
}

fn request(c: &Value, prompt: &str) -> GenerationRequest {
    let mut req = GenerationRequest::txt2img(prompt, c["width"].as_i64().unwrap(), c["height"].as_i64().unwrap());
    req.negative_prompt = c["negative"].as_str().unwrap().to_string();
    req.steps = c["steps"].as_u64().unwrap() as usize;
    req.cfg_scale = c["cfg"].as_f64().unwrap();
    req.sampler = c["sampler"].as_str().unwrap().parse().unwrap();
    req.seed = c["seed"].as_u64().unwrap();
    req
}

fn image(sd: &StableDiffusion, req: &GenerationRequest) -> Tensor {
    let out = sd.generate(req, &mut sd_pipeline::generate::quiet()).unwrap();
    Tensor::stack(&out.images, 0).permute([0, 2, 3, 1])
}

fn expected(name: &str) -> Tensor {
    Tensor::read_safetensors(fixtures().join(format!("lora_pipeline/{name}.safetensors")))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "image")
        .unwrap()
        .1
}

fn assert_matches(name: &str, ours: &Tensor, want: &Tensor) {
    assert_eq!(ours.size(), want.size(), "{name}: shape");
    let max = (ours - want).abs().max().double_value(&[]);
    let q = |t: &Tensor| (t * 255.0).round();
    let within = (q(ours) - q(want)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    println!("{name:20} max|Δ| = {max:.2e}   8-bit within 1 level: {:.4} %", within * 100.0);
    assert!(max <= 1e-3 && within >= 0.999, "{name}: max|Δ| {max:.3e}, within-1-level {within:.5}");
}

#[test]
fn lora_tag_equals_lora_option_equals_diffusers_fuse() {
    let c = case("lora_tiny_kohya_0.8");
    let lora_dir = fixtures().join("lora_pipeline/lora");
    let tagged = format!("{} <lora:tiny-kohya:0.8>", c["prompt"].as_str().unwrap());

    // As the CLI does: tags → files in the LoRA folder → load options.
    let (_, tags) = strip_lora_tags(&tagged).unwrap();
    let from_tags: Vec<(PathBuf, f64)> =
        tags.iter().map(|t| (resolve_lora(&t.name, Some(&lora_dir)).unwrap(), t.weight)).collect();
    assert_eq!(from_tags, vec![(lora_dir.join("tiny-kohya.safetensors"), 0.8)]);
    let by_tag = load(from_tags);
    let img_tag = image(&by_tag, &request(&c, &tagged));

    let by_option = load(vec![(lora_dir.join("tiny-kohya.safetensors"), 0.8)]);
    assert_eq!(by_option.loras.len(), 1);
    assert!(by_option.loras[0].ignored.is_empty(), "{:?}", by_option.loras[0].ignored);
    let img_option = image(&by_option, &request(&c, c["prompt"].as_str().unwrap()));
    assert!(img_tag.equal(&img_option), "<lora:tiny-kohya:0.8> and the load option must give the same image");

    assert_matches("lora_tiny_kohya_0.8", &img_tag, &expected("lora_tiny_kohya_0.8"));
    // The LoRA must matter: the plain model's image differs from it by far more than the tolerance.
    let plain = expected("plain");
    assert!((&plain - &img_tag).abs().max().double_value(&[]) > 0.01, "the fixture LoRA does not change the image");
    let unmerged = load(Vec::new());
    assert_matches("plain", &image(&unmerged, &request(&case("plain"), c["prompt"].as_str().unwrap())), &plain);
    // A tag for a LoRA that was not merged at load is refused, not silently ignored.
    let err = unmerged
        .generate(&request(&c, &tagged), &mut sd_pipeline::generate::quiet())
        .err()
        .expect("unmerged tag must fail");
    assert!(format!("{err:#}").contains("tiny-kohya"), "{err:#}");
}

#[test]
fn embedding_in_prompt_equals_diffusers_textual_inversion() {
    let c = case("ti_tiny_style");
    let mut sd = load(Vec::new());
    let notes = sd.text.load_embeddings(&fixtures().join("prompt/embeddings_sd1")).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let req = request(&c, c["prompt"].as_str().unwrap());
    let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap();
    let names: Vec<&str> = out.embeddings_used.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["tiny-style"]);
    assert_matches("ti_tiny_style", &Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]), &expected("ti_tiny_style"));
}

#[test]
fn lora_for_another_architecture_names_its_first_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    let t = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, tch::Device::Cpu));
    let tensors = vec![
        ("lora_unet_input_blocks_1_1_proj_in.lora_down.weight".to_string(), t(&[2, 320])),
        ("lora_unet_input_blocks_1_1_proj_in.lora_up.weight".to_string(), t(&[320, 2])),
    ];
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.loras = vec![(path, 1.0)];
    let err = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).err().expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("input_blocks_1_1_proj_in") && msg.contains("other.safetensors"), "{msg}");
}
