//! `sd generate` on an SD3 folder through the real binary: the image equals diffusers' StableDiffusion3Pipeline
//! output for the same request (fixtures/sd3_pipeline/no_t5, from scripts/fixtures/gen_82_sd3_pipeline.py) to ±1 in
//! 8 bits on at least 99.9 % of the values, `--no-t5` is recorded in the parameters, img2img and inpainting equal
//! StableDiffusion3Img2ImgPipeline's and StableDiffusion3InpaintPipeline's (fixtures/sd3_img2img,
//! gen_83_sd3_img2img.py) the same way, and the flags SD3 does not take are refused with exit code 2, as are the
//! samplers of the other model kind both ways (a UNet sampler without a flow-matching form on SD3, a flow-matching
//! one on SD1). `sd serve` on the same folder answers A1111's txt2img and img2img with `sd generate`'s pixels and
//! parameters, and refuses what SD3 does not run yet with a 400 naming it.

use crate::server;

use base64::Engine as _;
use sd_test_support::fixtures;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn generate(out: &Path) -> Command {
    let mut c = base(&out.join("{seed}.png"));
    c.args(["--steps", "4", "--cfg-scale", "5", "--seed", "1"]);
    c
}

/// The model, prompts, size and output flags every case shares.
fn base(pattern: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a photograph of an astronaut riding a horse", "-n", "blurry, low quality"]);
    c.args(["--width", "16", "--height", "16", "--threads", "1"]); // one thread, as the test server runs
    c.args(["--dtype", "f32", "--device", "cpu", "-q", "--no-watermark", "--no-t5", "--max-sequence-length", "16"]);
    c.arg("--model").arg(fixtures().join("models/sd3"));
    c.arg("--output").arg(pattern);
    c
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// Values of `png` more than 1 away from the reference image (N,H,W,3 floats in [0, 1]) of `batch_index`.
fn values_off(png: &Path, reference: &Path, batch_index: usize) -> (usize, usize) {
    let got = image::open(png).unwrap().to_rgb8();
    let bytes = std::fs::read(reference).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let all: Vec<f32> =
        st.tensor("image").unwrap().data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let n = got.as_raw().len();
    let reference = &all[batch_index * n..(batch_index + 1) * n];
    let off =
        got.as_raw().iter().zip(reference).filter(|(g, r)| (**g as f32 - (**r * 255.0).round()).abs() > 1.0).count();
    (off, n)
}

#[test]
fn generate_matches_diffusers_without_t5() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&mut generate(dir.path()));
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("1.png");
    let (off, n) = values_off(&png, &fixtures().join("sd3_pipeline/no_t5.safetensors"), 0);
    println!("values off by more than 1: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    let bytes = std::fs::read(&png).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("T5: off") && text.contains("Steps: 4"), "parameters chunk lacks the SD3 settings");
}

#[test]
fn img2img_and_inpainting_match_diffusers() {
    // the fixture case strength_055_no_t5_batch2: 10 steps at 0.55 (6 run), CFG 4, two images from one seed
    let dir = tempfile::tempdir().unwrap();
    let init = fixtures().join("sd3_img2img/init.png");
    let mut c = base(&dir.path().join("{n}.png"));
    c.args(["--init-image", init.to_str().unwrap(), "--strength", "0.55", "--steps", "10", "--cfg-scale", "4"]);
    c.args(["--seed", "8", "--batch-size", "2"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    for i in 0..2 {
        let png = dir.path().join(format!("{i:03}.png"));
        let (off, n) = values_off(&png, &fixtures().join("sd3_img2img/strength_055_no_t5_batch2.safetensors"), i);
        println!("image {i}: values off by more than 1: {off} of {n}");
        assert!(off as f64 <= 0.001 * n as f64, "image {i}: {off} values differ by more than 1");
        let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).to_string();
        assert!(text.contains("Denoising strength: 0.55"), "the parameters record the strength");
    }
    // inpainting: the case inpaint_strength_07_no_t5_batch2 (5 steps at 0.7, CFG 4, two images)
    let mask = fixtures().join("sd3_img2img/mask.png");
    let mut c = base(&dir.path().join("inpaint-{n}.png"));
    c.args(["--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap(), "--strength", "0.7"]);
    c.args(["--steps", "5", "--cfg-scale", "4", "--seed", "11", "--batch-size", "2"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    for i in 0..2 {
        let png = dir.path().join(format!("inpaint-{i:03}.png"));
        let reference = fixtures().join("sd3_img2img/inpaint_strength_07_no_t5_batch2.safetensors");
        let (off, n) = values_off(&png, &reference, i);
        println!("inpainted image {i}: values off by more than 1: {off} of {n}");
        assert!(off as f64 <= 0.001 * n as f64, "inpainted image {i}: {off} values differ by more than 1");
    }
}

#[test]
fn skip_layer_guidance_matches_diffusers() {
    // fixtures/sd3_slg/layer1_default (gen_84_sd3_slg.py): block 1 skipped, diffusers' default window and scale
    let dir = tempfile::tempdir().unwrap();
    let mut c = base(&dir.path().join("slg.png"));
    c.args(["--slg-layers", "1", "--steps", "10", "--cfg-scale", "4.5", "--seed", "21"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("slg.png");
    let (off, n) = values_off(&png, &fixtures().join("sd3_slg/layer1_default.safetensors"), 0);
    println!("values off by more than 1: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).to_string();
    assert!(text.contains("SLG layers: 1, SLG scale: 2.8"), "the parameters record skip-layer guidance");
}

#[test]
fn flags_sd3_does_not_take_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        (vec!["--sampler", "ddim"], "sampler ddim is for UNet models (sd1 sd2 sdxl), not for this sd3 model"),
        (vec!["--sampler", "DPM++ 2M SDE"], "samplers for it: flow-euler, flow-euler-a, flow-heun, flow-dpmpp-2m"),
        (vec!["--clip-skip", "2"], "--clip-skip"),
        (vec!["--emphasis", "strong"], "--emphasis: unknown emphasis mode `strong`"),
        (vec!["--batch-size", "0"], "--batch-size"),
    ] {
        let (code, err) = run(generate(dir.path()).args(&extra));
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // and --no-t5, --slg-layers or a per-encoder prompt on a UNet model
    for flag in [["--slg-layers", "7"], ["--max-sequence-length", "77"], ["--prompt-2", "a castle"]] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
        c.args(["generate", "x"]).args(flag).arg("--model").arg(fixtures().join("models/sd1"));
        let (code, err) = run(&mut c);
        assert_eq!(code, 2, "{flag:?}: {err}");
        assert!(err.contains("SD3"), "{flag:?}: {err}");
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "x", "--no-t5", "--model"]).arg(fixtures().join("models/sd1"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SD3"), "{err}");
    // and a flow-matching sampler on a UNet model, for the first pass and the hires pass
    for flags in [&["--sampler", "flow-heun"][..], &["--hires-scale", "2", "--hires-sampler", "flow-euler"][..]] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
        c.args(["generate", "x", "-q", "--output"]).arg(dir.path().join("unet.png"));
        c.args(flags).arg("--model").arg(fixtures().join("models/sd1"));
        let (code, err) = run(&mut c);
        assert_eq!(code, 2, "{flags:?}: {err}");
        assert!(err.contains("is for flow-matching models (sd3), not for this sd1 model"), "{flags:?}: {err}");
        assert!(err.contains("samplers for it: euler, euler-a,"), "{flags:?}: {err}");
    }
    assert!(!dir.path().join("unet.png").exists());
}

#[test]
fn flow_samplers_run_and_are_listed_for_sd3() {
    // the new flow samplers through the binary (their numbers are checked in sd-pipeline's sd3_samplers test);
    // --eta reaches flow-euler-a
    let dir = tempfile::tempdir().unwrap();
    for (i, flags) in
        [&["--sampler", "flow-heun"][..], &["--sampler", "flow-euler-a", "--eta", "0.5"][..]].into_iter().enumerate()
    {
        let png = dir.path().join(format!("{i}.png"));
        let (code, err) = run(base(&png).args(["--steps", "3", "--seed", "2"]).args(flags));
        assert_eq!(code, 0, "{flags:?}: {err}");
        assert!(png.exists(), "{flags:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).arg("samplers").output().expect("run sd");
    let text = String::from_utf8_lossy(&out.stdout);
    let head = text.lines().next().unwrap_or_default();
    assert!(head.starts_with("NAME") && head.contains("MODELS"), "{text}");
    for (name, models) in [("euler", "sd1 sd2 sdxl"), ("flow-euler", "sd3"), ("flow-dpmpp-2m", "sd3")] {
        let row = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default();
        assert!(row.contains(models), "{name}: {row}");
    }
}

const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";

fn b64_of(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn post(s: &server::Server, path: &str, body: &Value) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let r = client.post(format!("{}{path}", s.url)).json(body).send().expect("request");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

/// The served images of an A1111 response, written to `dir/served-{i}.png`.
fn served(r: &Value, dir: &Path) -> Vec<PathBuf> {
    let images = r["images"].as_array().expect("images");
    let mut paths = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(img.as_str().unwrap()).unwrap();
        let path = dir.join(format!("served-{i}.png"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    paths
}

fn parameters(png: &Path) -> String {
    let bytes = std::fs::read(png).unwrap();
    sd_provenance::inspect::inspect_bytes("png", &bytes).unwrap().parameters_raw.expect("a parameters chunk")
}

#[test]
fn sd_serve_runs_sd3_as_sd_generate_does() {
    let dir = tempfile::tempdir().unwrap();
    let loras = fixtures().join("sd3_lora");
    let extra = [
        "--device",
        "cpu",
        "--no-watermark",
        "--no-t5",
        "--max-sequence-length",
        "16",
        "--no-c2pa",
        "--lora-dir",
        loras.to_str().unwrap(),
    ];
    let s = server::Server::start_with_model(&fixtures().join("models/sd3"), &extra);

    // txt2img with A1111's default sampler name: "Euler" runs as flow-matching Euler, the model's own
    let body = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 16, "height": 16, "steps": 4,
                      "cfg_scale": 5, "seed": 1, "sampler_name": "Euler"});
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let got = served(&r, dir.path());
    assert_eq!(got.len(), 1);
    let (off, n) = values_off(&got[0], &fixtures().join("sd3_pipeline/no_t5.safetensors"), 0);
    println!("served txt2img: values off by more than 1 from diffusers: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    let mut c = generate(dir.path());
    c.arg("--no-c2pa");
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let cli = dir.path().join("1.png");
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&got[0]), pixels(&cli), "served pixels differ from sd generate's");
    assert_eq!(parameters(&got[0]), parameters(&cli), "served parameters differ from sd generate's");

    // img2img and inpainting: diffusers' StableDiffusion3Img2ImgPipeline / InpaintPipeline cases
    let init = fixtures().join("sd3_img2img/init.png");
    let body = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 16, "height": 16, "steps": 10,
                      "cfg_scale": 4, "seed": 8, "batch_size": 2, "denoising_strength": 0.55,
                      "init_images": [b64_of(&init)]});
    let (code, r) = post(&s, "/sdapi/v1/img2img", &body);
    assert_eq!(code, 200, "{r}");
    for (i, png) in served(&r, dir.path()).iter().enumerate() {
        let (off, n) = values_off(png, &fixtures().join("sd3_img2img/strength_055_no_t5_batch2.safetensors"), i);
        println!("served img2img {i}: values off by more than 1: {off} of {n}");
        assert!(off as f64 <= 0.001 * n as f64, "img2img {i}: {off} values differ by more than 1");
    }
    let mask = fixtures().join("sd3_img2img/mask.png");
    let body = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 16, "height": 16, "steps": 5,
                      "cfg_scale": 4, "seed": 11, "batch_size": 2, "denoising_strength": 0.7,
                      "init_images": [b64_of(&init)], "mask": b64_of(&mask)});
    let (code, r) = post(&s, "/sdapi/v1/img2img", &body);
    assert_eq!(code, 200, "{r}");
    for (i, png) in served(&r, dir.path()).iter().enumerate() {
        let reference = fixtures().join("sd3_img2img/inpaint_strength_07_no_t5_batch2.safetensors");
        let (off, n) = values_off(png, &reference, i);
        println!("served inpainting {i}: values off by more than 1: {off} of {n}");
        assert!(off as f64 <= 0.001 * n as f64, "inpainting {i}: {off} values differ by more than 1");
    }

    // a `<lora:…>` tag merges the LoRA (diffusers' fuse_lora at 0.8)
    let body = json!({"prompt": format!("{PROMPT} <lora:style:0.8>"), "negative_prompt": NEGATIVE, "width": 16,
                      "height": 16, "steps": 4, "cfg_scale": 5, "seed": 1});
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let got = served(&r, dir.path());
    let (off, n) = values_off(&got[0], &fixtures().join("sd3_lora/lora_08.safetensors"), 0);
    println!("served LoRA txt2img: values off by more than 1 from diffusers: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    assert!(parameters(&got[0]).contains("Lora hashes: \"style: "), "{}", parameters(&got[0]));

    // OpenAI's images API: `size: auto` is the transformer's native size (sample_size × the VAE's factor)
    let config = |c: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("models/sd3/{c}/config.json"))).unwrap())
            .unwrap()
    };
    let levels = config("vae")["block_out_channels"].as_array().unwrap().len() as u32;
    let native = config("transformer")["sample_size"].as_u64().unwrap() as u32 * 2u32.pow(levels - 1);
    let (code, r) = post(&s, "/v1/images/generations", &json!({"prompt": PROMPT, "size": "auto", "steps": 2}));
    assert_eq!(code, 200, "{r}");
    let bytes = base64::engine::general_purpose::STANDARD.decode(r["data"][0]["b64_json"].as_str().unwrap()).unwrap();
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), native);

    // what SD3 does not run yet: a 400 naming it, and the server goes on serving
    let txt = json!({"prompt": PROMPT, "width": 16, "height": 16, "steps": 1});
    for (change, needle) in [
        (json!({"enable_hr": true, "hr_scale": 2}), "hires fix"),
        (json!({"sampler_name": "DDIM"}), "flow-matching"),
        (json!({"width": 24}), "multiple of 16"),
        (json!({"override_settings": {"CLIP_stop_at_last_layers": 2}}), "clip skip"),
    ] {
        let mut body = txt.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
        assert_eq!(code, 400, "{change}: {r}");
        assert!(r.to_string().contains(needle), "{change}: {r}");
    }
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &txt);
    assert_eq!(code, 200, "{r}");
}

#[test]
fn lora_matches_diffusers_fuse_lora() {
    // fixtures/sd3_lora (gen_99_sd3_lora.py): a PEFT LoRA on the transformer's attention and CLIP-L, fused at 0.8
    let dir = tempfile::tempdir().unwrap();
    let lora = fixtures().join("sd3_lora/style.safetensors");
    let mut c = generate(dir.path());
    c.arg("--lora").arg(format!("{}:0.8", lora.display()));
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("1.png");
    let (off, n) = values_off(&png, &fixtures().join("sd3_lora/lora_08.safetensors"), 0);
    println!("values off by more than 1: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    let (without, _) = values_off(&png, &fixtures().join("sd3_pipeline/no_t5.safetensors"), 0);
    assert!(without > n / 10, "the LoRA changes the image ({without} of {n} values differ from the plain one)");
    assert!(parameters(&png).contains("Lora hashes: \"style: "), "{}", parameters(&png));
    // a UNet LoRA matches nothing in an SD3 model: refused by name
    let mut c = generate(dir.path());
    c.arg("--lora").arg(fixtures().join("lora_pipeline/lora/tiny-kohya.safetensors"));
    let (code, err) = run(c.arg("--overwrite"));
    assert_ne!(code, 0);
    assert!(err.contains("matches none of this model's weights"), "{err}");
}

#[test]
fn clip_g_prompt_matches_diffusers_prompt_2() {
    // fixtures/sd3_prompts/clip_g_only_no_t5 (gen_99_sd3_encoder_prompts.py)
    let dir = tempfile::tempdir().unwrap();
    let mut c = base(&dir.path().join("p2.png"));
    c.args(["--prompt-2", "an oil painting of a castle", "--steps", "3", "--cfg-scale", "5", "--seed", "6"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let png = dir.path().join("p2.png");
    let (off, n) = values_off(&png, &fixtures().join("sd3_prompts/clip_g_only_no_t5.safetensors"), 0);
    println!("values off by more than 1: {off} of {n}");
    assert!(off as f64 <= 0.001 * n as f64, "{off} values differ by more than 1");
    assert!(parameters(&png).contains("CLIP-G prompt: an oil painting of a castle"), "{}", parameters(&png));
}
