//! `sd generate` on an SD3 folder through the real binary: the image equals diffusers' StableDiffusion3Pipeline
//! output for the same request (fixtures/sd3_pipeline/no_t5, from scripts/fixtures/gen_82_sd3_pipeline.py) to ±1 in
//! 8 bits on at least 99.9 % of the values, `--no-t5` is recorded in the parameters, img2img and inpainting equal
//! StableDiffusion3Img2ImgPipeline's and StableDiffusion3InpaintPipeline's (fixtures/sd3_img2img,
//! gen_83_sd3_img2img.py) the same way, and the flags SD3 does not take are refused with exit code 2, as are the
//! samplers of the other model kind both ways (a UNet sampler on SD3, a flow-matching one on SD1).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn generate(out: &Path) -> Command {
    let mut c = base(&out.join("{seed}.png"));
    c.args(["--steps", "4", "--cfg-scale", "5", "--seed", "1"]);
    c
}

/// The model, prompts, size and output flags every case shares.
fn base(pattern: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a photograph of an astronaut riding a horse", "-n", "blurry, low quality"]);
    c.args(["--width", "16", "--height", "16"]);
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
        (vec!["--sampler", "euler"], "sampler euler is for UNet models (sd1 sd2 sdxl), not for this sd3 model"),
        (vec!["--sampler", "DPM++ 2M Karras"], "samplers for it: flow-euler, flow-euler-a, flow-heun, flow-dpmpp-2m"),
        (vec!["--clip-skip", "2"], "--clip-skip"),
        (vec!["--batch-size", "0"], "--batch-size"),
    ] {
        let (code, err) = run(generate(dir.path()).args(&extra));
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // sd serve says it does not serve SD3 yet, before binding a port
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["serve", "--port", "0", "--no-c2pa", "--model"]).arg(fixtures().join("models/sd3"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Stable Diffusion 3") && err.contains("sd generate"), "{err}");
    // and --no-t5 or --slg-layers on a UNet model
    for flag in [["--slg-layers", "7"], ["--max-sequence-length", "77"]] {
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
