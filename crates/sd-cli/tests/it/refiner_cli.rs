//! `sd generate --refiner` and the latent hires upscalers through the real binary: a run that writes the image
//! with A1111's parameters, the refiner alone as img2img, and bad input (a base given as the refiner, a switch
//! point outside (0, 1), the refiner folder as a txt2img model, an unknown hires upscaler) refused with a clear
//! message, the documented exit code and no output file. The pixels themselves are checked against diffusers in
//! crates/sd-pipeline/tests/refiner.rs and hires.rs. `sd serve` runs the refiner for A1111's `refiner_checkpoint`
//! and `refiner_switch_at` with `sd generate --refiner`'s pixels and parameters, and refuses what it cannot follow.

use crate::server;

use base64::Engine as _;
use sd_test_support::fixtures;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn model(name: &str) -> String {
    fixtures().join("models").join(name).to_string_lossy().into_owned()
}

/// Run, returning (exit code, stderr); asserts nothing panicked.
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn generate(base: &str, out: &Path) -> Command {
    sized(base, out, 64)
}

fn sized(base: &str, out: &Path, size: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a red circle", "--model", &model(base), "--steps", "6", "--dtype", "f32", "--device", "cpu"]);
    let size = size.to_string();
    c.args(["-q", "--seed", "5", "-W", &size, "-H", &size, "--no-watermark", "--output"]).arg(out.join("{n}.png"));
    c
}

fn parameters(png: &Path) -> String {
    let bytes = std::fs::read(png).unwrap();
    sd_provenance::inspect::inspect_bytes("png", &bytes).expect("inspect").parameters_raw.expect("parameters")
}

#[test]
fn refiner_run_writes_a1111_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sdxl", dir.path());
    c.args(["--refiner", &model("sdxl-refiner-tiny"), "--refiner-switch", "0.7"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let p = parameters(&dir.path().join("000.png"));
    assert!(p.contains("Refiner: sdxl-refiner-tiny ["), "{p}");
    assert!(p.contains("Refiner switch at: 0.7"), "{p}");
    assert!(p.contains("Model: sdxl,"), "{p}");
}

#[test]
fn refiner_alone_repaints_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sdxl-refiner-tiny", dir.path());
    c.arg("--init-image").arg(fixtures().join("pipeline/init.png")).args(["--strength", "0.3"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("000.png").is_file());
}

#[test]
fn refiner_misuse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The SDXL base given as the refiner.
    let mut c = generate("sdxl", &out);
    c.args(["--refiner", &model("sdxl")]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an SDXL refiner"), "{err}");
    // A refiner after an SD1 model.
    let mut c = generate("sd1", &out);
    c.args(["--refiner", &model("sdxl-refiner-tiny")]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an SDXL base"), "{err}");
    // Switch points outside (0, 1): refused before anything loads.
    for s in ["0", "1", "1.5", "-0.2", "NaN"] {
        let mut c = generate("sdxl", &out);
        c.args(["--refiner", &model("sdxl-refiner-tiny"), &format!("--refiner-switch={s}")]);
        let (code, err) = run(&mut c);
        assert_eq!(code, 2, "{s}: {err}");
        assert!(err.contains("--refiner-switch") && err.contains("strictly between 0 and 1"), "{s}: {err}");
    }
    let mut c = generate("sdxl", &out);
    c.args(["--refiner-switch", "0.5"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--refiner-switch needs --refiner"), "{err}");
    // Combinations the refiner does not follow.
    let mut c = generate("sdxl", &out);
    c.args(["--refiner", &model("sdxl-refiner-tiny"), "--hires-scale", "2"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hires fix is not supported"), "{err}");
    // A refiner folder that does not exist.
    let mut c = generate("sdxl", &out);
    c.arg("--refiner").arg(dir.path().join("nowhere"));
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--refiner"), "{err}");
    // The refiner as a txt2img model.
    let mut c = generate("sdxl-refiner-tiny", &out);
    let (code, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SDXL refiner") && err.contains("--init-image"), "{err}");
    assert!(!out.exists(), "nothing may be written");
}

#[test]
fn latent_hires_run_and_unknown_upscaler() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sized("sd1", dir.path(), 32);
    c.args(["--hires-scale", "2", "--hires-upscaler", "Latent (nearest-exact)"]);
    c.args(["--hires-prompt", "a blue square"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let p = parameters(&dir.path().join("000.png"));
    assert!(p.contains("Hires upscaler: Latent (nearest-exact)") && p.contains("Hires prompt: a blue square"), "{p}");

    let out = dir.path().join("bad");
    let mut c = generate("sd1", &out);
    c.args(["--hires-scale", "2", "--hires-upscaler", "ESRGAN_4x"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    for name in ["\"Lanczos\"", "\"Latent\"", "\"Latent (bicubic antialiased)\"", "\"Latent (nearest-exact)\""] {
        assert!(err.contains(name), "{name} missing: {err}");
    }
    let mut c = generate("sd1", &out);
    c.args(["--hires-sampler", "Euler a"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --hires-scale"), "{err}");
    assert!(!out.exists());
}

fn post(s: &server::Server, path: &str, body: &Value) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let r = client.post(format!("{}{path}", s.url)).json(body).send().expect("request");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

#[test]
fn served_refiner_gives_sd_generates_pixels_and_parameters() {
    let models = fixtures().join("models");
    let s = server::Server::start_with_model(
        &models.join("sdxl"),
        &["--device", "cpu", "--no-watermark", "--no-c2pa", "--models-dir", models.to_str().unwrap()],
    );
    let body = json!({"prompt": "a red circle", "steps": 6, "seed": 5, "width": 64, "height": 64, "cfg_scale": 5,
                      "sampler_name": "Euler", "refiner_checkpoint": "sdxl-refiner-tiny", "refiner_switch_at": 0.7});
    let (code, r) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{r}");
    let served = base64::engine::general_purpose::STANDARD.decode(r["images"][0].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = generate("sdxl", dir.path());
    c.args(["--refiner", &model("sdxl-refiner-tiny"), "--refiner-switch", "0.7", "--cfg-scale", "5"]);
    // one thread as the server runs: a different split of the reductions changes the last bits
    c.args(["--sampler", "Euler", "--no-c2pa", "--threads", "1"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("000.png");
    let pixels = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&served), pixels(&std::fs::read(&file).unwrap()), "served pixels differ from sd generate's");
    let served_params =
        sd_provenance::inspect::inspect_bytes("png", &served).unwrap().parameters_raw.expect("parameters");
    assert_eq!(served_params, parameters(&file));
    assert!(served_params.contains("Refiner switch at: 0.7"), "{served_params}");
    // a second job reuses the loaded refiner and gives the same picture
    let (code, again) = post(&s, "/sdapi/v1/txt2img", &body);
    assert_eq!(code, 200, "{again}");
    let again = base64::engine::general_purpose::STANDARD.decode(again["images"][0].as_str().unwrap()).unwrap();
    assert_eq!(pixels(&again), pixels(&served), "the second job's pixels differ");

    // what the refiner cannot follow: a 4xx naming the field
    let mask =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixtures().join("pipeline/init.png")).unwrap());
    let cases = [
        (json!({"refiner_checkpoint": "no-such-model"}), "/sdapi/v1/txt2img", 404, "unknown refiner"),
        (json!({"refiner_switch_at": 1.5}), "/sdapi/v1/txt2img", 400, "refiner_switch_at"),
        (json!({"enable_hr": true, "hr_scale": 2}), "/sdapi/v1/txt2img", 400, "hires fix"),
        (json!({"init_images": [mask.clone()], "mask": mask}), "/sdapi/v1/img2img", 400, "inpainting"),
    ];
    for (change, path, want, needle) in cases {
        let mut b = body.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (code, r) = post(&s, path, &b);
        assert_eq!(code, want, "{change}: {r}");
        assert!(r.to_string().contains(needle), "{change}: {r}");
    }
}
