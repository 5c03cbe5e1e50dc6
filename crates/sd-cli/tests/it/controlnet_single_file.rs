//! Single-file ControlNets through `sd generate --controlnet FILE` and `sd convert FILE` (the tiny SD1 fixture model
//! and fixtures/controlnet_single_file/ from scripts/fixtures/gen_97_controlnet_single_file.py):
//! - gen_88's ControlNet for the tiny SD1 pipeline as an original-layout `.pth` (`for_tiny_sd1/`) draws the same
//!   pixels as its diffusers folder, and is recorded under the file's stem;
//! - `sd convert` writes a diffusers ControlNet folder equal to diffusers' weights and config (the `.pth` and the
//!   ControlNet 1.0 style bundle that diffusers' `from_single_file` reads), and the converted tiny-pipeline file
//!   draws the folder's pixels again; an existing destination is refused without --overwrite, flags for
//!   checkpoints are refused;
//! - bad files (truncated, misshaped, no ControlNet, an absurd block number): exit code 1 and an error naming the
//!   problem, no panic, nothing written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn fx(p: &str) -> String {
    root().join("fixtures").join(p).to_str().unwrap().to_string()
}

/// `sd generate` on the tiny SD1 model with one ControlNet unit: 32×32, 4 Euler steps, CFG 7, f32, one thread.
fn generate(out: &Path, controlnet: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a red circle", "--model", &fx("models/sd1"), "--steps", "4", "--dtype", "f32"]);
    c.args(["--threads", "1", "-q", "--seed", "5", "-W", "32", "-H", "32", "--sampler", "Euler", "--safety", "off"]);
    c.args(["--no-watermark", "--no-c2pa", "-n", "blurry", "--control-scale", "0.9"]);
    c.args(["--controlnet", controlnet, "--control-image", &fx("controlnet/control.png")]);
    c.arg("--output").arg(out.join("{n}.png"));
    c
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sd(args: &[&str]) -> (i32, String) {
    run(Command::new(env!("CARGO_BIN_EXE_sd")).args(args))
}

/// Pixels of the image `sd generate` draws with `controlnet`.
fn pixels(controlnet: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&mut generate(dir.path(), controlnet));
    assert_eq!(code, 0, "{controlnet}: {err}");
    image::open(dir.path().join("000.png")).unwrap().to_rgb8().into_raw()
}

const TINY_FILE: &str = "controlnet_single_file/for_tiny_sd1/control_sd1.pth";

#[test]
fn a_single_file_draws_the_folders_pixels() {
    let folder = pixels(&fx("models/controlnet-sd1"));
    assert_eq!(pixels(&fx(TINY_FILE)), folder, "original-layout .pth");
    // The unit is recorded under the file's stem, as A1111 names single-file models.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&mut generate(dir.path(), &fx(TINY_FILE)));
    assert_eq!(code, 0, "{err}");
    let report = sd_provenance::inspect::inspect_file(&dir.path().join("000.png"), None).unwrap();
    let params = report.parameters_raw.unwrap();
    assert!(params.contains("Model: control_sd1,"), "{params}");
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn convert_writes_a_diffusers_controlnet_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("control_tiny");
    let out_s = out.to_str().unwrap();
    let input = fx("controlnet_single_file/control_tiny.pth");
    let (code, err) = sd(&["convert", &input, "-o", out_s]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ControlNet (original ControlNet layout)"), "{err}");
    let config = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&out), config(&root().join("fixtures/controlnet_single_file")));
    let want = tensors(&root().join("fixtures/controlnet_single_file/diffusion_pytorch_model.safetensors"));
    let got = tensors(&out.join("diffusion_pytorch_model.safetensors"));
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        assert!(got[k].equal(w), "`{k}` differs from diffusers");
    }

    // An existing destination is refused and left as it is; --overwrite replaces it.
    let before = std::fs::read(out.join("config.json")).unwrap();
    let bundle = fx("controlnet_single_file/control_tiny_bundle.safetensors");
    let (code, err) = sd(&["convert", &bundle, "-o", out_s]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), before);
    let cfg = fx("controlnet_single_file");
    let (code, err) = sd(&["convert", &bundle, "-o", out_s, "--overwrite", "--config-dir", &cfg, "--dtype", "f16"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left out 6 tensor(s) of the bundled Stable Diffusion model"), "{err}");
    let st = sd_core::weights::SafeTensorsFiles::open(&[out.join("diffusion_pytorch_model.safetensors")]).unwrap();
    assert_eq!(st.entry("conv_in.weight").unwrap().dtype, safetensors::Dtype::F16);
    // Checkpoint-only flags are usage errors.
    let (code, err) = sd(&["convert", &input, "-o", tmp.path().join("x").to_str().unwrap(), "--ema"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ema does not apply") && err.contains("ControlNet"), "{err}");
    // The tiny pipeline's ControlNet, converted, draws its folder's pixels.
    let tiny = tmp.path().join("control_sd1");
    let (code, err) = sd(&["convert", &fx(TINY_FILE), "-o", tiny.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(pixels(tiny.to_str().unwrap()), pixels(&fx("models/controlnet-sd1")), "converted folder");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "only the converted folders: {left:?}");
}

#[test]
fn bad_files_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(root().join("fixtures/controlnet_single_file/config.json"), bad.join("config.json")).unwrap();
    // The original-layout tensors, for building bad files from (the fixture's config.json beside them).
    let st: Vec<(String, Tensor)> =
        tensors(&root().join("fixtures/controlnet_single_file/control_tiny_bundle.safetensors"))
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("control_model.")?.to_string(), v)))
            .collect();
    let save = |name: &str, t: &[(String, Tensor)]| {
        let p = bad.join(name);
        sd_core::weights::save_safetensors(t, &p, None, sd_core::atomic::Overwrite::Allow).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bytes = std::fs::read(root().join("fixtures/controlnet_single_file/control_tiny.pth")).unwrap();
    std::fs::write(bad.join("truncated.pth"), &bytes[..bytes.len() / 3]).unwrap();
    let truncated = bad.join("truncated.pth").to_str().unwrap().to_string();
    let mut misshaped = st.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<Vec<_>>();
    misshaped.retain(|(k, _)| k != "input_blocks.1.0.in_layers.2.weight");
    misshaped.push(("input_blocks.1.0.in_layers.2.weight".into(), Tensor::zeros([8, 3, 3, 3], tch::kind::FLOAT_CPU)));
    let mut absurd = st.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<Vec<_>>();
    absurd.push(("input_blocks.99999.1.proj_in.weight".into(), Tensor::zeros([1], tch::kind::FLOAT_CPU)));
    let cases = [
        (truncated, "truncated.pth"),
        (save("misshaped.safetensors", &misshaped), "`down_blocks.0.resnets.0.conv1.weight` has shape [8, 3, 3, 3]"),
        (save("lora.safetensors", &[("lora_unet_x.alpha".into(), Tensor::from(1.0f32))]), "is not a ControlNet"),
        (save("absurd.safetensors", &absurd), "checkpoint block index limit of 1000"),
    ];
    let out = tmp.path().join("out");
    for (file, expect) in &cases {
        let (code, err) = run(&mut generate(&out, file));
        assert_eq!(code, 1, "{file}: {err}");
        assert!(err.contains(expect), "{file}: expected {expect:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let conv = tmp.path().join("converted");
        let (code, err) = sd(&["convert", file, "-o", conv.to_str().unwrap()]);
        assert_eq!(code, 1, "convert {file}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!conv.exists() && !out.exists(), "{file}: something was written");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "no temp folders left: {left:?}");
}
