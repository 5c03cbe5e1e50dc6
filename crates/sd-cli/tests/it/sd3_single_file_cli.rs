//! Single-file SD3 checkpoints through the real binary (fixtures/sd3_single_file, from
//! scripts/fixtures/gen_94_sd3_single_file.py): `sd convert` writes a diffusers SD3 folder that `sd generate` runs to
//! diffusers' `StableDiffusion3Pipeline.from_single_file` image for the same request (±1 in 8 bits on at least
//! 99.9 % of the values), `sd generate --model FILE` gives the same pixels through the conversion cache, a file
//! without text encoders converts with notes saying which encoders SD3 needs, and the UNet-family flags are refused
//! with exit code 2. `sd serve --model FILE` serves the same image through A1111's txt2img.

use crate::server;

use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_single_file"))
}

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// The fixture case (see expected.json) as `sd generate` flags.
fn generate(model: &Path, out: &Path) -> Command {
    let mut c = sd();
    c.args(["generate", "a photograph of an astronaut riding a horse", "-n", "blurry, low quality"]);
    c.args(["--width", "16", "--height", "16", "--steps", "3", "--cfg-scale", "5", "--seed", "7"]);
    c.args(["--dtype", "f32", "--device", "cpu", "-q", "--no-watermark", "--max-sequence-length", "16"]);
    c.arg("--model").arg(model).arg("--output").arg(out);
    c
}

/// Values of `png` more than 1 away from diffusers' image.
fn values_off(png: &Path) -> (usize, usize) {
    let got = image::open(png).unwrap().to_rgb8();
    let bytes = std::fs::read(dir().join("run.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> =
        st.tensor("image").unwrap().data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let off = got.as_raw().iter().zip(&want).filter(|(g, r)| (**g as f32 - (**r * 255.0).round()).abs() > 1.0).count();
    (off, got.as_raw().len())
}

#[test]
fn convert_then_generate_and_generate_from_the_file_match_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("sd3-tiny");
    let (code, err) = run(sd()
        .arg("convert")
        .arg(dir().join("sd3_tiny.safetensors"))
        .arg("-o")
        .arg(&folder)
        .arg("--config-dir")
        .arg(dir().join("config")));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("SD3 (2 blocks, qk norm, dual attention)"), "{err}");
    let index = std::fs::read_to_string(folder.join("model_index.json")).unwrap();
    assert!(index.contains("StableDiffusion3Pipeline") && index.contains("T5EncoderModel"), "{index}");

    let png = tmp.path().join("folder.png");
    let (code, err) = run(&mut generate(&folder, &png));
    assert_eq!(code, 0, "{err}");
    let (off, n) = values_off(&png);
    assert!(off * 1000 <= n, "{off} of {n} values off by more than 1");

    let png2 = tmp.path().join("file.png");
    let mut c = generate(&dir().join("sd3_tiny.safetensors"), &png2);
    c.arg("--config-dir").arg(dir().join("config")).env("XDG_CACHE_HOME", tmp.path().join("cache"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(image::open(&png).unwrap().to_rgb8(), image::open(&png2).unwrap().to_rgb8());
}

/// The fixture as ComfyUI users hold SD3 (MMDiT + VAE, and `clip_l`, `clip_g`, `t5xxl` files of their own) converts
/// with `--clip-l --clip-g --t5 --t5-tokenizer` into a folder that draws diffusers' image; those flags are refused
/// for other checkpoints.
#[test]
fn separate_encoder_files_convert_to_the_single_files_image() {
    use tch::Tensor;
    let tmp = tempfile::tempdir().unwrap();
    let all = Tensor::read_safetensors(dir().join("sd3_tiny.safetensors")).unwrap();
    let write = |name: &str, keep: &dyn Fn(&str) -> Option<String>| {
        let part: Vec<(String, Tensor)> =
            all.iter().filter_map(|(n, t)| keep(n).map(|k| (k, t.shallow_clone()))).collect();
        let p = tmp.path().join(name);
        Tensor::write_safetensors(&part, &p).unwrap();
        p
    };
    let main = write("mmdit.safetensors", &|n| (!n.starts_with("text_encoders.")).then(|| n.to_string()));
    let strip = |prefix: &'static str| move |n: &str| n.strip_prefix(prefix).map(String::from);
    let l = write("clip_l.safetensors", &strip("text_encoders.clip_l.transformer."));
    let g = write("clip_g.safetensors", &strip("text_encoders.clip_g.transformer."));
    let t5 = write("t5xxl_fp16.safetensors", &strip("text_encoders.t5xxl.transformer."));
    let folder = tmp.path().join("from-four-files");
    let (code, err) = run(sd()
        .arg("convert")
        .arg(&main)
        .arg("-o")
        .arg(&folder)
        .arg("--clip-l")
        .arg(&l)
        .arg("--clip-g")
        .arg(&g)
        .arg("--t5")
        .arg(&t5)
        .arg("--t5-tokenizer")
        .arg(dir().join("config/tokenizer_3/tokenizer.json"))
        .arg("--config-dir")
        .arg(dir().join("config")));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("note:"), "{err}");
    assert!(folder.join("tokenizer_3/tokenizer.json").is_file() && folder.join("text_encoder_3").is_dir());
    let png = tmp.path().join("four.png");
    let (code, err) = run(&mut generate(&folder, &png));
    assert_eq!(code, 0, "{err}");
    let (off, n) = values_off(&png);
    assert!(off * 1000 <= n, "{off} of {n} values off by more than 1");

    // the checkpoint already has CLIP-L: exit 1, named
    let (code, err) = run(sd()
        .arg("convert")
        .arg(dir().join("sd3_tiny.safetensors"))
        .arg("-o")
        .arg(tmp.path().join("x"))
        .arg("--clip-l")
        .arg(&l));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a CLIP-L text encoder"), "{err}");
    assert!(!tmp.path().join("x").exists());
    // an SD3 flag on a checkpoint of another family: usage error
    let (code, err) = run(sd()
        .arg("convert")
        .arg(dir().join("../convert/sd1.safetensors"))
        .arg("-o")
        .arg(tmp.path().join("y"))
        .arg("--t5")
        .arg(&t5));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--t5 applies to SD3"), "{err}");
}

#[test]
fn a_file_without_text_encoders_converts_with_notes_and_unet_flags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    let (code, err) = run(sd()
        .arg("convert")
        .arg(dir().join("sd3_plain.safetensors"))
        .arg("-o")
        .arg(&out)
        .arg("--config-dir")
        .arg(dir().join("plain_config")));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: the file has no CLIP-L text encoder") && err.contains("CLIP-G"), "{err}");
    assert!(out.join("transformer/diffusion_pytorch_model.safetensors").is_file());
    // without --config-dir the head width of this tiny MMDiT (4, no qk norm) is unknown: exit 1, named
    let (code, err) =
        run(sd().arg("convert").arg(dir().join("sd3_plain.safetensors")).arg("-o").arg(tmp.path().join("x")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--config-dir"), "{err}");
    let (code, err) = run(sd()
        .arg("convert")
        .arg(dir().join("sd3_tiny.safetensors"))
        .args(["--family", "sd1", "-o"])
        .arg(tmp.path().join("y")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--family") && err.contains("SD3"), "{err}");
}

#[test]
fn sd_serve_takes_a_single_file_sd3() {
    let tmp = tempfile::tempdir().unwrap();
    // The server converts into $XDG_CACHE_HOME; the other tests here pass their own cache explicitly.
    std::env::set_var("XDG_CACHE_HOME", tmp.path().join("cache"));
    let config = dir().join("config");
    let extra = ["--device", "cpu", "--no-watermark", "--no-c2pa", "--max-sequence-length", "16", "--config-dir"];
    let mut extra: Vec<&str> = extra.to_vec();
    extra.push(config.to_str().unwrap());
    let s = server::Server::start_with_model(&dir().join("sd3_tiny.safetensors"), &extra);
    let body = serde_json::json!({"prompt": "a photograph of an astronaut riding a horse",
        "negative_prompt": "blurry, low quality", "width": 16, "height": 16, "steps": 3, "cfg_scale": 5, "seed": 7,
        "sampler_name": "Euler"});
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let r = client.post(format!("{}/sdapi/v1/txt2img", s.url)).json(&body).send().expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let r: serde_json::Value = r.json().unwrap();
    let img = base64::engine::general_purpose::STANDARD.decode(r["images"][0].as_str().unwrap()).unwrap();
    let png = tmp.path().join("served.png");
    std::fs::write(&png, img).unwrap();
    let (off, n) = values_off(&png);
    assert!(off * 1000 <= n, "{off} of {n} values off by more than 1");
}
