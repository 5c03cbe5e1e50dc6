//! `--offload model|sequential` on the CPU (sd_pipeline::offload). Parked weights vanish here
//! (`Parking::Vanish`: empty tensors until brought back), so a component that ran without being brought over
//! would fail instead of silently using CPU weights. Checked: the same pixels as without offload (exactly: the same kernels run on the
//! same values) for txt2img, img2img and inpainting on SD1, SDXL (two text encoders) and a ControlNet; every tensor
//! of every component is under the offloader's control; parked weights really are gone; sequential streaming
//! sends each UNet weight once per UNet call.

use crate::diffusers_parity::request;
use sd_core::weights::{kind_of, SafeTensorsFiles};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::offload::{Group, Offload, Parking};
use sd_pipeline::request::ControlInput;
use sd_test_support::fixtures;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn load(model: &str, offload: Offload, controlnet: bool) -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    opts.offload = offload;
    opts.offload_parking = Parking::Vanish;
    if controlnet {
        opts.controlnets = vec![fixtures().join("models/controlnet-sd1")];
    }
    StableDiffusion::load(fixtures().join("models").join(model).to_str().unwrap(), opts).unwrap()
}

fn cases() -> Vec<Value> {
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/cases.json")).unwrap()).unwrap();
    let wanted = ["sd1_Euler_a", "sd1_img2img", "sd1_inpaint_legacy", "sd1inpaint_inpaint", "sdxl"];
    let picked: Vec<Value> = all.into_iter().filter(|c| wanted.contains(&c["name"].as_str().unwrap())).collect();
    assert_eq!(picked.len(), wanted.len());
    picked
}

fn images(sd: &StableDiffusion, case: &Value, control: bool) -> (Tensor, usize) {
    let mut req = request(case);
    if control {
        let picture = sd_core::image_io::load_rgb(&fixtures().join("controlnet/control.png")).unwrap();
        req.control = vec![ControlInput::new("controlnet-sd1", picture)];
    }
    let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).unwrap();
    (Tensor::stack(&out.images, 0), out.unet_calls)
}

/// Bytes the model holds for a component folder's tensors: floats in the compute dtype (f32), other buffers
/// (CLIP's `position_ids`) as stored.
fn component_bytes(model: &str, components: &[&str]) -> u64 {
    let mut total = 0;
    for c in components {
        let dir = fixtures().join("models").join(model).join(c);
        let file = sd_core::model_dir::find_weights(&dir, None).unwrap();
        let files = SafeTensorsFiles::open_path(&file).unwrap();
        let names: Vec<String> = files.names().map(String::from).collect();
        for n in names {
            let e = files.entry(&n).unwrap();
            let numel: i64 = e.shape.iter().product();
            let kind = kind_of(e.dtype).unwrap();
            let float = matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double);
            let size = if float { 4 } else { kind.elt_size_in_bytes() as i64 };
            total += (numel * size) as u64;
        }
    }
    total
}

#[test]
fn offloaded_runs_draw_the_same_pixels() {
    for case in cases() {
        let model = case["model"].as_str().unwrap();
        let name = case["name"].as_str().unwrap();
        let (plain, _) = images(&load(model, Offload::None, false), &case, false);
        for mode in [Offload::Model, Offload::Sequential] {
            let sd = load(model, mode, false);
            let before = sd_models::stream::streamed_bytes();
            let (ours, calls) = images(&sd, &case, false);
            let streamed = sd_models::stream::streamed_bytes() - before;
            let diff = (&ours - &plain).abs().max().double_value(&[]);
            println!("{name} --offload {mode}: max |Δ| {diff:e}, {calls} UNet calls, {streamed} bytes streamed");
            assert_eq!(diff, 0.0, "{name}: --offload {mode} changed the pixels");
            let unet = component_bytes(model, &["unet"]);
            if mode == Offload::Sequential {
                // Every UNet weight crossed once per call (other tests of this binary may stream too: at least).
                assert!(streamed >= unet * calls as u64, "{name}: streamed {streamed} < {unet} × {calls}");
            }
        }
    }
}

#[test]
fn every_weight_is_under_the_offloaders_control_and_parked_weights_are_gone() {
    for (model, encoders) in [("sd1", &["text_encoder"][..]), ("sdxl", &["text_encoder", "text_encoder_2"][..])] {
        let sd = load(model, Offload::Model, false);
        let report = sd.offload.report();
        let bytes = |g: Group| report.iter().find(|(x, _, _)| *x == g).map(|r| r.2).unwrap_or(0);
        assert_eq!(bytes(Group::TextEncoders), component_bytes(model, encoders), "{model} text encoders");
        assert_eq!(bytes(Group::Denoiser), component_bytes(model, &["unet"]), "{model} UNet");
        assert_eq!(bytes(Group::Vae), component_bytes(model, &["vae"]), "{model} VAE");
        assert!(report.iter().all(|(_, active, _)| !active), "nothing is on the compute device after loading");
        // Decoding brings the VAE over; the others stay parked.
        let z = Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        let _image = sd.decode(&z).unwrap();
        let active: Vec<Group> = sd.offload.report().iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(active, vec![Group::Vae]);
        // Parked, the VAE has no weights to compute with: calling it directly, past the offloader, fails.
        sd.offload.park_all().unwrap();
        let direct = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sd.vae.decode(&z).map(|_| ())));
        assert!(!matches!(direct, Ok(Ok(()))), "{model}: a parked VAE still decoded");
    }
}

#[test]
fn a_controlnet_moves_with_the_unet() {
    let case = cases().into_iter().find(|c| c["name"] == "sd1_Euler_a").unwrap();
    let (plain, _) = images(&load("sd1", Offload::None, true), &case, true);
    let sd = load("sd1", Offload::Model, true);
    let denoiser = sd.offload.report().iter().find(|r| r.0 == Group::Denoiser).map(|r| r.2).unwrap();
    let unet_and_control = component_bytes("sd1", &["unet"]) + component_bytes("controlnet-sd1", &["."]);
    assert_eq!(denoiser, unet_and_control, "the ControlNet's weights join the UNet's group");
    let (ours, _) = images(&sd, &case, true);
    assert_eq!((&ours - &plain).abs().max().double_value(&[]), 0.0);
}
