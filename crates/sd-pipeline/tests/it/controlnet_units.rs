//! ControlNet units against their references (fixtures/controlnet_units, from
//! scripts/fixtures/gen_92_controlnet_units.py):
//! - diffusers' MultiControlNetModel pipeline (two tiny random SD1 ControlNets, two pictures, scales, windows), with
//!   and without guess mode; one ControlNet in guess mode; StableDiffusionXLControlNetPipeline with a tiny SDXL
//!   ControlNet, with and without guess mode. Pipeline tolerances: float image within 1e-3, 8-bit within one level
//!   on ≥ 99.9 % of values.
//! - The A1111 extension's "Crop and Resize" / "Resize and Fill" geometry, made with Pillow: byte-identical.
//! - Canny on the set-up's astronaut photo against OpenCV's cv2.Canny(rgb, 100, 200): ≥ 99 % equal pixels and
//!   ≥ 99 % edge-set overlap (measured: identical, 23 596 edge pixels).
//! - A ControlNet for another family, and a unit naming a ControlNet that is not loaded: errors naming both.

use sd_pipeline::control::{fit, ControlInput, Preprocess, ResizeMode};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use sd_test_support::fixtures;
use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("controlnet_units/cases.json")).unwrap()).unwrap()
}

fn load(model: &str, controlnets: &[&str]) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.controlnets = controlnets.iter().map(|c| fixtures().join("models").join(c)).collect();
    StableDiffusion::load(fixtures().join("models").join(model).to_str().unwrap(), opts).unwrap()
}

fn check_case(sd: &StableDiffusion, c: &Value) {
    let name = c["name"].as_str().unwrap();
    let n = |k: &str| c[k].as_f64().unwrap();
    let mut req = GenerationRequest::txt2img("a red circle", 32, 32);
    req.negative_prompt = "blurry".into();
    req.steps = n("steps") as usize;
    req.cfg_scale = n("cfg");
    req.seed = n("seed") as u64;
    req.sampler = "Euler".parse().unwrap();
    for u in c["units"].as_array().unwrap() {
        let image =
            sd_core::image_io::load_rgb(&fixtures().join("controlnet_units").join(u["image"].as_str().unwrap()))
                .unwrap();
        let mut unit = ControlInput::new(u["model"].as_str().unwrap(), image);
        (unit.scale, unit.start, unit.end) =
            (u["scale"].as_f64().unwrap(), u["start"].as_f64().unwrap(), u["end"].as_f64().unwrap());
        unit.guess_mode = c["guess_mode"].as_bool().unwrap();
        req.control.push(unit);
    }
    let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap();
    let expected =
        Tensor::read_safetensors(fixtures().join(format!("controlnet_units/{name}.safetensors"))).unwrap().remove(0).1;
    let ours = Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]);
    let max = (&ours - &expected).abs().max().double_value(&[]);
    let q = |t: &Tensor| (t * 255.0).round();
    let within = (q(&ours) - q(&expected)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    println!("{name}: max|Δ| {max:.2e}, within one level {:.4} %", within * 100.0);
    assert!(max <= 1e-3 && within >= 0.999, "{name}: differs from diffusers ({max}, {within})");
    // The units really steer: without them the image is another one.
    let mut plain = req.clone();
    plain.control.clear();
    let p = sd.generate(&plain, &mut sd_pipeline::generate::quiet()).unwrap();
    assert!((Tensor::stack(&p.images, 0).permute([0, 2, 3, 1]) - &expected).abs().max().double_value(&[]) > 1e-2);
}

#[test]
fn sd1_multi_and_guess_mode_match_diffusers() {
    let sd = load("sd1", &["controlnet-sd1", "controlnet-sd1-b"]);
    let all = cases();
    let sd1: Vec<&Value> = all["pipelines"].as_array().unwrap().iter().filter(|c| c["model"] == "sd1").collect();
    assert_eq!(sd1.len(), 3);
    for c in sd1 {
        check_case(&sd, c);
    }
}

#[test]
fn sdxl_controlnet_matches_diffusers() {
    let sd = load("sdxl", &["controlnet-sdxl"]);
    let all = cases();
    let xl: Vec<&Value> = all["pipelines"].as_array().unwrap().iter().filter(|c| c["model"] == "sdxl").collect();
    assert_eq!(xl.len(), 2);
    for c in xl {
        check_case(&sd, c);
    }
}

#[test]
fn a_controlnet_for_another_family_is_refused() {
    let mut sd = load("sd1", &[]);
    let err = sd.load_controlnet(&fixtures().join("models/controlnet-sdxl")).unwrap_err();
    let msg = format!("{err:#}");
    println!("{msg}");
    assert!(
        msg.contains("controlnet-sdxl") && msg.contains("text_time") && msg.contains("cross-attention dim 16"),
        "{msg}"
    );
    // A unit naming a ControlNet that is not loaded is an error before any step runs.
    let mut req = GenerationRequest::txt2img("x", 32, 32);
    req.steps = 1;
    req.control.push(ControlInput::new("nowhere", image::RgbImage::new(32, 32)));
    let Err(err) = sd.generate(&req, &mut sd_pipeline::generate::quiet()) else { panic!("an unknown ControlNet ran") };
    assert!(format!("{err:#}").contains("\"nowhere\""), "{err:#}");
}

#[test]
fn resize_modes_match_the_pillow_reference() {
    let all = cases();
    let dir = fixtures().join("controlnet_units");
    let src = sd_core::image_io::load_rgb(&dir.join("resize_src.png")).unwrap();
    for r in all["resize"].as_array().unwrap() {
        let (w, h) = (r["width"].as_u64().unwrap() as u32, r["height"].as_u64().unwrap() as u32);
        let mode: ResizeMode = r["mode"].as_str().unwrap().parse().unwrap();
        let want = sd_core::image_io::load_rgb(&dir.join(r["file"].as_str().unwrap())).unwrap();
        let got = fit(&src, w, h, mode);
        assert_eq!(got.dimensions(), want.dimensions());
        let differ = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        println!("{} {w}x{h}: {differ} differing values", mode.label());
        assert_eq!(differ, 0, "{} {w}x{h} differs from the Pillow reference", mode.label());
    }
}

#[test]
fn canny_matches_opencv_on_a_photo() {
    let all = cases();
    let c = &all["canny"];
    let photo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../")).join(c["photo"].as_str().unwrap());
    let rgb = sd_core::image_io::load_rgb(&photo).expect("the set-up photo (cargo xtask setup) is missing");
    let want =
        sd_core::image_io::load_luma(&fixtures().join("controlnet_units").join(c["file"].as_str().unwrap())).unwrap();
    let mut unit = ControlInput::new("any", rgb.clone());
    unit.preprocess = Preprocess::Canny { low: c["low"].as_f64().unwrap(), high: c["high"].as_f64().unwrap() };
    let got = unit.control_map(rgb.width(), rgb.height()).unwrap();
    let total = want.as_raw().len();
    let (mut same, mut ours, mut theirs, mut both) = (0usize, 0usize, 0usize, 0usize);
    for (g, w) in got.pixels().zip(want.pixels()) {
        let (a, b) = (g.0[0] > 127, w.0[0] > 127);
        same += usize::from(a == b);
        ours += usize::from(a);
        theirs += usize::from(b);
        both += usize::from(a && b);
    }
    let equal = same as f64 / total as f64;
    println!(
        "canny vs OpenCV {}: {:.3} % equal pixels; edges ours {ours}, OpenCV {theirs}, common {both}",
        c["opencv"],
        equal * 100.0
    );
    assert!(theirs > 1000, "the reference has edges");
    assert!(equal >= 0.99, "Canny differs from OpenCV on {:.3} % of pixels", (1.0 - equal) * 100.0);
    // Edges are sparse, so also compare the edge sets themselves (intersection over union).
    let iou = both as f64 / (ours + theirs - both) as f64;
    assert!(iou >= 0.99, "Canny edge sets overlap only {:.3} % with OpenCV's", iou * 100.0);
}
