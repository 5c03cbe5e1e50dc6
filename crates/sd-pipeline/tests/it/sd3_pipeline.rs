//! Stable Diffusion 3 end to end against diffusers' StableDiffusion3Pipeline (fixtures from
//! scripts/fixtures/gen_82_sd3_pipeline.py: a tiny random SD3.5-Medium-like pipeline). Checked: the encoded prompt
//! and pooled embedding (CLIP-L + CLIP-G + T5), and whole txt2img runs with and without T5, with a negative prompt,
//! non-square, without CFG and at the default 256-token T5 length: final latents within 1e-4 absolute, images within
//! 1e-3 (float). Measured worst: embeddings 4.8e-7, latents 3.1e-6 (of up to 5.9),
//! images 8.9e-7; the run without T5 bit-identical.
//! img2img against StableDiffusion3Img2ImgPipeline (scripts/fixtures/gen_83_sd3_img2img.py): an init picture
//! resized from 24×20, strengths with whole and fractional `steps × strength`, with and without T5 and CFG, two
//! images per prompt; inpainting against StableDiffusion3InpaintPipeline (same script: a mask of the init's size, full
//! and partial strength, with and without T5); the same tolerances. A prompt per encoder (`prompt_2`, `prompt_3`
//! and their negatives, scripts/fixtures/gen_99_sd3_encoder_prompts.py), with and without T5: the same tolerances.

use sd_pipeline::sd3::{Sd3Init, Sd3Pipeline, Sd3Request, SkipLayerGuidance};
use sd_test_support::{fixtures, max_abs_diff};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn read(name: &str) -> std::collections::HashMap<String, Tensor> {
    let p = fixtures().join("sd3_pipeline").join(name);
    Tensor::read_safetensors(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (gen_82_sd3_pipeline.py)", p.display()))
        .into_iter()
        .collect()
}

fn meta() -> serde_json::Value {
    let p = fixtures().join("sd3_pipeline/cases.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("cases.json")).unwrap()
}

fn model() -> PathBuf {
    fixtures().join("models/sd3")
}

/// The request a fixture case describes (the fields every SD3 script writes; batch size where given).
pub(crate) fn case_request(c: &serde_json::Value) -> Sd3Request {
    let mut req = Sd3Request::new(c["prompt"].as_str().unwrap());
    req.negative_prompt = c["negative_prompt"].as_str().unwrap().into();
    req.steps = c["num_inference_steps"].as_u64().unwrap() as usize;
    req.guidance_scale = c["guidance_scale"].as_f64().unwrap();
    req.width = c["width"].as_i64().unwrap();
    req.height = c["height"].as_i64().unwrap();
    req.seed = c["seed"].as_u64().unwrap();
    req.max_sequence_length = c["max_sequence_length"].as_u64().unwrap() as usize;
    if let Some(n) = c.get("num_images_per_prompt").and_then(|v| v.as_i64()) {
        req.batch_size = n;
    }
    req
}

/// (latents error, image error) against a fixture file's `latents` and `image` (N,H,W,3).
fn errors(file: &Path, images: &Tensor, latents: &Tensor) -> (f64, f64) {
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).into_iter().collect();
    (max_abs_diff(latents, &r["latents"]), max_abs_diff(&images.permute([0, 2, 3, 1]), &r["image"]))
}

#[test]
fn encode_prompt_matches_diffusers() {
    let m = meta();
    let pipe = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, false).unwrap();
    let r = read("encode.safetensors");
    let len = m["encode"]["max_sequence_length"].as_u64().unwrap() as usize;
    for (text, e, p) in [
        (m["encode"]["prompt"].as_str().unwrap(), "prompt_embeds", "pooled"),
        (m["encode"]["negative"].as_str().unwrap(), "negative_prompt_embeds", "negative_pooled"),
    ] {
        let c = pipe.encode_prompt(text, len).unwrap();
        let (de, dp) = (max_abs_diff(&c.prompt_embeds, &r[e]), max_abs_diff(&c.pooled, &r[p]));
        println!("{e}: {de:.2e}  {p}: {dp:.2e}");
        assert!(de <= 1e-5 && dp <= 1e-5, "{text:?}: embeds off by {de}, pooled by {dp}");
    }
}

#[test]
fn txt2img_matches_diffusers() {
    let with_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, false).unwrap();
    let no_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, true).unwrap();
    assert!(with_t5.has_t5() && !no_t5.has_t5());
    for c in meta()["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let pipe = if c["t5"].as_bool().unwrap() { &with_t5 } else { &no_t5 };
        let req = case_request(c);
        let (images, latents) = pipe.generate(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let r = read(&format!("{name}.safetensors"));
        let dl = max_abs_diff(&latents, &r["latents"]);
        let di = max_abs_diff(&images.permute([0, 2, 3, 1]), &r["image"]);
        println!(
            "{name:16} latents max|{:.3}| err {dl:.2e}   image err {di:.2e}",
            r["latents"].abs().max().double_value(&[])
        );
        assert!(dl <= 1e-4, "{name}: latents off by {dl}");
        assert!(di <= 1e-3, "{name}: image off by {di}");
    }
}

/// `sd generate`'s order, which lets SD3.5 Large fit 24 GB: encode, free the encoders, load the transformer,
/// denoise, free it, decode. The image is the resident pipeline's (checked against diffusers above), bit for bit,
/// and a part used after it was freed is a clear error.
#[test]
fn staged_loading_gives_the_resident_pipelines_image() {
    let c = &meta()["cases"][0];
    assert!(c["t5"].as_bool().unwrap(), "the first case runs with T5");
    let req = case_request(c);
    let resident = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, false).unwrap();
    let (want_images, want_latents) = resident.generate(&req).unwrap();
    drop(resident);
    let mut staged = Sd3Pipeline::load_staged(&model(), Kind::Float, Device::Cpu, false, &[]).unwrap();
    let e = staged.denoise_encoded(&req, &staged.encode(&req).unwrap(), &mut sd_pipeline::generate::quiet());
    assert!(format!("{:#}", e.unwrap_err()).contains("transformer is not loaded"));
    let prompts = staged.encode(&req).unwrap();
    staged.release_text_encoders();
    let Err(e) = staged.encode(&req) else { panic!("encoded with released text encoders") };
    assert!(format!("{e:#}").contains("text encoders were released"), "{e:#}");
    staged.load_transformer().unwrap();
    let (latents, done, interrupted) =
        staged.denoise_encoded(&req, &prompts, &mut sd_pipeline::generate::quiet()).unwrap();
    assert_eq!((done, interrupted), (req.steps, false));
    staged.release_transformer();
    assert!(format!("{:#}", staged.load_transformer().unwrap_err()).contains("transformer was released"));
    let images = staged.decode(&latents).unwrap();
    assert!(latents.equal(&want_latents), "latents differ from the resident pipeline's");
    assert!(images.equal(&want_images), "images differ from the resident pipeline's");
}

/// The memory check reads each part's size from the headers: every weight of the fixture is a float, so f32
/// takes exactly twice bf16, and T5 is counted only where the folder has it.
#[test]
fn weight_sizes_come_from_the_headers() {
    use sd_pipeline::sd3_memory::{Residency, Sd3Weights};
    let f32w = Sd3Weights::of_folder(&model(), Kind::Float).unwrap();
    let bf16 = Sd3Weights::of_folder(&model(), Kind::BFloat16).unwrap();
    assert!(f32w.transformer > 0 && f32w.clips > 0 && f32w.t5 > 0 && f32w.vae > 0, "{f32w:?}");
    assert_eq!(
        (f32w.transformer, f32w.clips, f32w.t5, f32w.vae),
        (2 * bf16.transformer, 2 * bf16.clips, 2 * bf16.t5, 2 * bf16.vae)
    );
    let all = f32w.peak(Residency::AllLoaded, true);
    assert_eq!(all, f32w.transformer + f32w.clips + f32w.t5 + f32w.vae);
    // the transformer's count is what its file holds: parameters × 4 bytes
    let files =
        sd_core::weights::SafeTensorsFiles::open_path(&model().join("transformer/diffusion_pytorch_model.safetensors"))
            .unwrap();
    let params: u64 = files.names().map(|n| files.entry(n).unwrap().shape.iter().product::<i64>() as u64).sum();
    assert_eq!(f32w.transformer, 4 * params);
    let e = sd_pipeline::sd3_memory::check_fits(&f32w, Kind::Float, true, Residency::AllLoaded, Some(all - 1));
    assert!(e.unwrap_err().to_string().contains("run with --dtype bf16"));
}

#[test]
fn bad_requests_are_clear_errors() {
    let pipe = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, true).unwrap();
    let mut req = Sd3Request::new("x");
    req.width = 18;
    req.height = 16;
    req.steps = 2;
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("multiple of 4"), "{e}");
    req.width = 16;
    req.sampler = "euler".parse().unwrap();
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("flow-matching"), "{e}");
    req.sampler = Default::default();
    let init = image::RgbImage::new(16, 16);
    req.init = Some(Sd3Init { image: init.clone(), strength: 0.5, mask: Some(image::GrayImage::new(8, 16)) });
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("the mask is 8x16 but the init image is 16x16"), "{e}");
    req.init = Some(Sd3Init { image: init, strength: 0.0, mask: None });
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("strength 0 is outside (0, 1]"), "{e}");
    assert!(Sd3Pipeline::load(Path::new(&fixtures().join("models/sd1")), Kind::Float, Device::Cpu, false).is_err());
}

#[test]
fn img2img_and_inpainting_match_diffusers() {
    let dir = fixtures().join("sd3_img2img");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("gen_83_sd3_img2img.py")).unwrap();
    let init = image::open(dir.join("init.png")).unwrap().to_rgb8();
    let mask = image::open(dir.join("mask.png")).unwrap().to_luma8();
    let with_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, false).unwrap();
    let no_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, true).unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let pipe = if c["t5"].as_bool().unwrap() { &with_t5 } else { &no_t5 };
        let mut req = case_request(c);
        req.init = Some(Sd3Init {
            image: init.clone(),
            strength: c["strength"].as_f64().unwrap(),
            mask: c["mask"].as_bool().unwrap_or(false).then(|| mask.clone()),
        });
        let (images, latents) = pipe.generate(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (dl, di) = errors(&dir.join(format!("{name}.safetensors")), &images, &latents);
        println!("{name:34} latents err {dl:.2e}   image err {di:.2e}");
        assert!(dl <= 1e-4, "{name}: latents off by {dl}");
        assert!(di <= 1e-3, "{name}: image off by {di}");
    }
}

#[test]
fn img2img_start_follows_sd3s_rounding() {
    use sd_pipeline::sd3::img2img_start;
    // 10 × 0.55 = 5.5: SD3 starts at int(10 − 5.5) = 4 (6 steps run); the UNet pipelines at 10 − int(5.5) = 5
    assert_eq!(img2img_start(10, 0.55).unwrap(), 4);
    assert_eq!(img2img_start(5, 0.6).unwrap(), 2);
    assert_eq!(img2img_start(3, 1.0).unwrap(), 0);
    // a small strength still runs one step (int(4 − 0.4) = 3), as in diffusers
    assert_eq!(img2img_start(4, 0.1).unwrap(), 3);
    for (steps, strength) in [(4, 0.0), (4, 1.5), (4, -0.5), (4, f64::NAN)] {
        assert!(img2img_start(steps, strength).is_err(), "{steps} steps at {strength} must be refused");
    }
}

#[test]
fn skip_layer_guidance_matches_diffusers() {
    // scripts/fixtures/gen_84_sd3_slg.py: one block at diffusers' default window and scale, both blocks wider
    let dir = fixtures().join("sd3_slg");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("gen_84_sd3_slg.py")).unwrap();
    let pipe = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, true).unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let mut req = Sd3Request::new(c["prompt"].as_str().unwrap());
        req.negative_prompt = c["negative_prompt"].as_str().unwrap().into();
        req.steps = c["num_inference_steps"].as_u64().unwrap() as usize;
        req.guidance_scale = c["guidance_scale"].as_f64().unwrap();
        req.width = 16;
        req.height = 16;
        req.seed = c["seed"].as_u64().unwrap();
        req.max_sequence_length = 16;
        let layers = c["skip_guidance_layers"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize);
        let mut slg = SkipLayerGuidance::new(layers.collect());
        if let Some(s) = c["skip_layer_guidance_scale"].as_f64() {
            slg.scale = s;
            slg.start = c["skip_layer_guidance_start"].as_f64().unwrap();
            slg.stop = c["skip_layer_guidance_stop"].as_f64().unwrap();
        }
        req.slg = Some(slg);
        let (images, latents) = pipe.generate(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (dl, di) = errors(&dir.join(format!("{name}.safetensors")), &images, &latents);
        req.slg = None;
        let (_, plain) = pipe.generate(&req).unwrap();
        let moved = max_abs_diff(&plain, &latents);
        println!(
            "{name:16} latents err {dl:.2e}   image err {di:.2e}   (without SLG the latents differ by {moved:.2e})"
        );
        assert!(dl <= 1e-4, "{name}: latents off by {dl}");
        assert!(di <= 1e-3, "{name}: image off by {di}");
        assert!(moved > 1e-2, "{name}: skip-layer guidance changed nothing ({moved})");
    }
    // refused: a block that does not exist, no CFG, img2img
    let mut req = Sd3Request::new("x");
    (req.width, req.height, req.steps) = (16, 16, 2);
    req.slg = Some(SkipLayerGuidance::new(vec![2]));
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("layer 2 does not exist"), "{e}");
    req.slg = Some(SkipLayerGuidance::new(vec![1]));
    req.guidance_scale = 1.0;
    let e = format!("{:#}", pipe.generate(&req).unwrap_err());
    assert!(e.contains("guidance scale above 1"), "{e}");
}

#[test]
fn prompts_per_encoder_match_diffusers() {
    let dir = fixtures().join("sd3_prompts");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("gen_99_sd3_encoder_prompts.py"))
            .unwrap();
    let with_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, false).unwrap();
    let no_t5 = Sd3Pipeline::load(&model(), Kind::Float, Device::Cpu, true).unwrap();
    let text = |c: &serde_json::Value, k: &str| c.get(k).and_then(|v| v.as_str()).map(String::from);
    for c in meta["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let pipe = if c["t5"].as_bool().unwrap() { &with_t5 } else { &no_t5 };
        let mut req = case_request(c);
        req.prompt_2 = text(c, "prompt_2");
        req.prompt_3 = text(c, "prompt_3");
        req.negative_prompt_2 = text(c, "negative_prompt_2");
        req.negative_prompt_3 = text(c, "negative_prompt_3");
        let (images, latents) = pipe.generate(&req).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (dl, di) = errors(&dir.join(format!("{name}.safetensors")), &images, &latents);
        println!("{name:20} latents err {dl:.2e}   image err {di:.2e}");
        assert!(dl <= 1e-4, "{name}: latents off by {dl}");
        assert!(di <= 1e-3, "{name}: image off by {di}");
        // the same request with one prompt for all encoders draws another picture
        let mut same = req.clone();
        (same.prompt_2, same.prompt_3, same.negative_prompt_2, same.negative_prompt_3) = (None, None, None, None);
        let (_, plain) = pipe.generate(&same).unwrap();
        assert!(max_abs_diff(&plain, &latents) > 1e-3, "{name}: the per-encoder prompts changed nothing");
    }
}

/// An SD3 folder whose `tokenizer_3/` holds only SentencePiece's `spiece.model` (fixtures/t5_spiece/,
/// gen_99_sd3_t5_spiece.py: the tiny pipeline with that tokenizer and a T5 encoder with a row per id swapped in)
/// encodes as diffusers' StableDiffusion3Pipeline with transformers' T5Tokenizer built from the same file: within
/// 1e-5 (measured 4.8e-7).
#[test]
fn spiece_only_tokenizer_3_encodes_as_diffusers() {
    let src = model();
    let spiece = fixtures().join("t5_spiece");
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let from = match name.to_str().unwrap() {
            n @ ("tokenizer_3" | "text_encoder_3") => spiece.join(n),
            _ => entry.path(),
        };
        copy_tree(&from, &tmp.path().join(&name));
    }
    assert!(!tmp.path().join("tokenizer_3/tokenizer.json").exists());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spiece.join("cases.json")).unwrap()).unwrap();
    let len = meta["max_length"].as_u64().unwrap() as usize;
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(spiece.join("encode.safetensors")).unwrap().into_iter().collect();
    let pipe = Sd3Pipeline::load(tmp.path(), Kind::Float, Device::Cpu, false).unwrap();
    for (i, text) in meta["encoded"].as_array().unwrap().iter().enumerate() {
        let c = pipe.encode_prompt(text.as_str().unwrap(), len).unwrap();
        let de = max_abs_diff(&c.prompt_embeds, &r[&format!("prompt_embeds_{i}")]);
        let dp = max_abs_diff(&c.pooled, &r[&format!("pooled_{i}")]);
        println!("{text}: embeds err {de:.2e}, pooled err {dp:.2e}");
        assert!(de <= 1e-5 && dp <= 1e-5, "{text}: embeds off by {de}, pooled by {dp}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}
