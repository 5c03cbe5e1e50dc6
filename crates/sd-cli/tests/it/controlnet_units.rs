//! ControlNet units through `sd generate` and `sd serve` (the tiny SD1 fixture model and the tiny random ControlNets
//! of scripts/fixtures/gen_88_controlnet.py / gen_92_controlnet_units.py):
//! - bad input: unit count mismatches, an unreadable control image, a ControlNet for another family — clear errors,
//!   exit codes, nothing written;
//! - two units with guess mode and resize modes recorded in the parameters as the A1111 extension records them;
//! - the A1111 API's `alwayson_scripts.controlnet` over real HTTP gives `sd generate`'s pixels and parameters for
//!   the same units (pixels and parameters chunk; the PNG bytes differ only in per-image ids and times), and `/controlnet/model_list` / `module_list` answer as the extension does.

use crate::server;

use base64::Engine as _;
use sd_test_support::fixtures;
use serde_json::{json, Value};
use server::Server;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn fx(p: &str) -> String {
    fixtures().join(p).to_str().unwrap().to_string()
}

/// `sd generate` on the tiny SD1 model: 32×32, 4 Euler steps, CFG 7, f32, one thread.
fn generate(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", "a red circle", "--model", &fx("models/sd1"), "--steps", "4", "--dtype", "f32"]);
    c.args(["--threads", "1", "-q", "--seed", "5", "-W", "32", "-H", "32", "--sampler", "Euler", "--safety", "off"]);
    c.args(["--no-watermark", "--no-c2pa", "-n", "blurry"]);
    c.arg("--output").arg(out.join("{n}.png"));
    c
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn unit_flags_are_checked_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fx("models/controlnet-sd1"), fx("models/controlnet-sd1-b"));
    let (img, img_b) = (fx("controlnet/control.png"), fx("controlnet_units/control_b.png"));
    // Two ControlNets, one picture.
    let (code, err) = run(generate(dir.path()).args(["--controlnet", &a, "--controlnet", &b, "--control-image", &img]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 --controlnet given but 1 --control-image"), "{err}");
    // A per-unit flag given neither once nor once per unit.
    let mut c = generate(dir.path());
    c.args(["--controlnet", &a, "--controlnet", &b, "--controlnet", &a]);
    c.args(["--control-image", &img, "--control-image", &img_b, "--control-image", &img]);
    c.args(["--control-scale", "0.5", "--control-scale", "0.7"]);
    let (code, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--control-scale is given 2 times for 3 --controlnet unit(s)"), "{err}");
    // A per-unit flag without any ControlNet, and unknown values.
    let (code, err) = run(generate(dir.path()).args(["--control-resize", "fill"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--control-resize needs --controlnet"), "{err}");
    let (code, err) =
        run(generate(dir.path()).args(["--controlnet", &a, "--control-image", &img, "--control-resize", "zoom"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("just, crop or fill"), "{err}");
    // An unreadable control picture: the file named, no panic.
    let bad = dir.path().join("not-an-image.png");
    std::fs::write(&bad, b"hello").unwrap();
    let (code, err) = run(generate(dir.path()).args(["--controlnet", &a, "--control-image", bad.to_str().unwrap()]));
    assert_ne!(code, 0);
    assert!(err.contains("--control-image") && err.contains("not-an-image.png"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    // A ControlNet for another family: both named.
    let (code, err) =
        run(generate(dir.path()).args(["--controlnet", &fx("models/controlnet-sdxl"), "--control-image", &img]));
    assert_ne!(code, 0);
    assert!(err.contains("controlnet-sdxl") && err.contains("is for a") && err.contains("but sd1 is"), "{err}");
    assert_eq!(files_in(dir.path()), 1, "only the bad picture: nothing was written");
}

/// The two-unit command line the server test reproduces.
fn two_units(c: &mut Command) -> &mut Command {
    c.args(["--controlnet", &fx("models/controlnet-sd1"), "--control-image", &fx("controlnet/control.png")]);
    c.args(["--controlnet", &fx("models/controlnet-sd1-b"), "--control-image", &fx("controlnet_units/resize_src.png")]);
    c.args(["--control-scale", "0.8", "--control-scale", "0.5", "--control-start", "0", "--control-start", "0.25"]);
    c.args(["--control-end", "1", "--control-end", "0.75", "--control-resize", "crop", "--control-resize", "fill"]);
    c.args(["--control-guess-mode"])
}

#[test]
fn two_units_are_recorded_in_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(two_units(&mut generate(dir.path())));
    assert_eq!(code, 0, "{err}");
    let report = sd_provenance::inspect::inspect_file(&dir.path().join("000.png"), None).unwrap();
    let params = report.parameters_raw.unwrap();
    println!("{params}");
    assert!(params.contains("ControlNet 0: \"Module: none, Model: controlnet-sd1, Weight: 0.8, Resize Mode: Crop and Resize, Guidance Start: 0, Guidance End: 1, Control Mode: ControlNet is more important\""), "{params}");
    assert!(params.contains("ControlNet 1: \"Module: none, Model: controlnet-sd1-b, Weight: 0.5, Resize Mode: Resize and Fill, Guidance Start: 0.25, Guidance End: 0.75"), "{params}");
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("client")
}

fn b64_file(p: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
}

fn png_of(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

#[test]
fn a1111_controlnet_units_give_sd_generates_image() {
    let s = Server::start_with_model(
        &fixtures().join("models/sd1"),
        &["--controlnet-dir", &fx("models"), "--safety", "off", "--no-watermark"],
    );
    let r: Value = client().get(format!("{}/controlnet/model_list", s.url)).send().unwrap().json().unwrap();
    assert_eq!(r["model_list"], json!(["controlnet-sd1", "controlnet-sd1-b", "controlnet-sdxl"]), "{r}");
    let r: Value = client().get(format!("{}/controlnet/module_list", s.url)).send().unwrap().json().unwrap();
    let modules = ["none", "canny", "ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl"];
    assert_eq!(r["module_list"], json!([&modules[..], &["ip-adapter_clip_sdxl_plus_vith"]].concat()), "{r}");

    // The same two units as `two_units`, as webuiapi's ControlNetUnit sends them (model names with a hash suffix).
    let unit = |model: &str, image: &str, weight: f64, start: f64, end: f64, resize: &str| {
        json!({"enabled": true, "input_image": b64_file(image), "mask": null, "module": "none", "model": model,
               "weight": weight, "resize_mode": resize, "lowvram": false, "processor_res": 512, "threshold_a": 64,
               "threshold_b": 64, "guidance_start": start, "guidance_end": end, "control_mode": 2,
               "pixel_perfect": false})
    };
    let body = json!({"prompt": "a red circle", "negative_prompt": "blurry", "seed": 5, "steps": 4, "width": 32,
    "height": 32, "cfg_scale": 7, "sampler_name": "Euler",
    "alwayson_scripts": {"controlnet": {"args": [
        unit("controlnet-sd1 [0123abcd]", &fx("controlnet/control.png"), 0.8, 0.0, 1.0, "Crop and Resize"),
        unit("controlnet-sd1-b", &fx("controlnet_units/resize_src.png"), 0.5, 0.25, 0.75, "Resize and Fill"),
        {"enabled": false, "model": "controlnet-sdxl"}
    ]}}});
    let resp = client().post(format!("{}/sdapi/v1/txt2img", s.url)).json(&body).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r: Value = resp.json().unwrap();
    let served = png_of(r["images"][0].as_str().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(two_units(&mut generate(dir.path())));
    assert_eq!(code, 0, "{err}");
    let file = std::fs::read(dir.path().join("000.png")).unwrap();
    let px = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8().into_raw();
    assert_eq!(px(&served), px(&file), "served pixels differ from sd generate's");
    let params = |png: &[u8]| sd_provenance::inspect::inspect_bytes("png", png).unwrap().parameters_raw.unwrap();
    assert_eq!(params(&served), params(&file), "parameters differ");
    // The PNG bytes themselves differ only in per-image ids and times (AIGC ProduceID, XMP CreateDate).
    // Without the units the image is another one.
    let mut plain = body.clone();
    plain["alwayson_scripts"] = json!({});
    let r: Value = client().post(format!("{}/sdapi/v1/txt2img", s.url)).json(&plain).send().unwrap().json().unwrap();
    assert_ne!(px(&png_of(r["images"][0].as_str().unwrap())), px(&file));

    // Bad units: clear 4xx naming the field.
    let post = |b: &Value| {
        let r = client().post(format!("{}/sdapi/v1/txt2img", s.url)).json(b).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let mut b = body.clone();
    b["alwayson_scripts"]["controlnet"]["args"][0]["model"] = json!("nope");
    let (code, text) = post(&b);
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("args[0].model") && text.contains("controlnet-sd1-b"), "{text}");
    let mut b = body.clone();
    b["alwayson_scripts"]["controlnet"]["args"][1]["input_image"] = json!("bm90IGFuIGltYWdl");
    let (code, text) = post(&b);
    assert!(code == 400 || code == 422, "{code} {text}");
    assert!(text.contains("args[1].image"), "{text}");
    let mut b = body.clone();
    b["alwayson_scripts"]["controlnet"]["args"][0]["control_mode"] = json!(1);
    let (code, text) = post(&b);
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("My prompt is more important"), "{text}");
    // A ControlNet of another family fails the job with both named.
    let mut b = body.clone();
    b["alwayson_scripts"]["controlnet"]["args"] =
        json!([unit("controlnet-sdxl", &fx("controlnet/control.png"), 1.0, 0.0, 1.0, "Just Resize")]);
    let (code, text) = post(&b);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("controlnet-sdxl") && text.contains("SDXL") || text.contains("text_time"), "{text}");
}
