//! ControlNetModel against diffusers (fixtures/controlnet/forward.safetensors, from
//! scripts/fixtures/gen_88_controlnet.py): a tiny random ControlNet for the tiny SD1 UNet, every weight random (the
//! zero convolutions too), residuals for one input at conditioning scale 0.8. f32, max abs error ≤ 1e-5.

use sd_models::controlnet::ControlNetModel;
use sd_test_support::fixtures;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

#[test]
fn residuals_match_diffusers() {
    let cn = ControlNetModel::load(&fixtures().join("models/controlnet-sd1"), Kind::Float, Device::Cpu).unwrap();
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("controlnet/forward.safetensors")).unwrap().into_iter().collect();
    let out =
        tch::no_grad(|| cn.forward(&t["sample"], &Tensor::from(500.0f32), &t["ctx"], &t["cond"], 0.8, None)).unwrap();
    assert_eq!(out.down.len(), 4);
    let mut worst: f64 = 0.0;
    for (i, d) in out.down.iter().enumerate() {
        let want = &t[&format!("down_{i}")];
        assert_eq!(d.size(), want.size(), "down residual {i}");
        worst = worst.max((d - want).abs().max().double_value(&[]));
    }
    worst = worst.max((&out.mid - &t["mid"]).abs().max().double_value(&[]));
    println!("max |Δ| over all residuals: {worst:.2e}");
    assert!(worst <= 1e-5, "ControlNet residuals differ from diffusers: {worst}");
    // A control image of the wrong size is an error, not a LibTorch abort.
    let bad = Tensor::zeros([2, 3, 30, 30], (Kind::Float, Device::Cpu));
    assert!(cn.forward(&t["sample"], &Tensor::from(1.0f32), &t["ctx"], &bad, 1.0, None).is_err());
}

#[test]
fn a_unet_folder_is_not_a_controlnet() {
    let err = ControlNetModel::load(&fixtures().join("models/sd1/unet"), Kind::Float, Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("ControlNetModel"), "{err:#}");
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("controlnet_units").join(name)).unwrap().into_iter().collect()
}

fn worst(out: &sd_models::controlnet::ControlResiduals, t: &HashMap<String, Tensor>) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, d) in out.down.iter().enumerate() {
        let want = &t[&format!("down_{i}")];
        assert_eq!(d.size(), want.size(), "down residual {i}");
        worst = worst.max((d - want).abs().max().double_value(&[]));
    }
    assert!(!t.contains_key(&format!("down_{}", out.down.len())), "fewer residuals than diffusers");
    worst.max((&out.mid - &t["mid"]).abs().max().double_value(&[]))
}

/// diffusers' guess_mode (fixtures/controlnet_units/guess_forward.safetensors, scripts/fixtures/
/// gen_92_controlnet_units.py): residuals weighted by logspace(-1, 0, skips + 1) × 0.8. f32, max abs error ≤ 1e-5.
#[test]
fn guess_mode_residuals_match_diffusers() {
    let cn = ControlNetModel::load(&fixtures().join("models/controlnet-sd1"), Kind::Float, Device::Cpu).unwrap();
    let t = tensors("guess_forward.safetensors");
    let t400 = Tensor::from(400.0f32);
    let out =
        tch::no_grad(|| cn.forward_with_mode(&t["sample"], &t400, &t["ctx"], &t["cond"], 0.8, true, None)).unwrap();
    let w = worst(&out, &t);
    println!("guess mode: max |Δ| over all residuals: {w:.2e}");
    assert!(w <= 1e-5, "guess-mode residuals differ from diffusers: {w}");
    // Without guess mode the shallow residuals are 10× larger: the weighting really applies.
    let plain = tch::no_grad(|| cn.forward(&t["sample"], &t400, &t["ctx"], &t["cond"], 0.8, None)).unwrap();
    let ratio =
        plain.down[0].abs().sum(Kind::Float).double_value(&[]) / out.down[0].abs().sum(Kind::Float).double_value(&[]);
    assert!((ratio - 10.0).abs() < 1e-3, "first residual weight ratio {ratio}");
}

/// An SDXL ControlNet (text_time added conditioning, from the tiny SDXL UNet) with text_embeds and time_ids, as
/// diffusers' ControlNetModel computes it. f32, max abs error ≤ 1e-5.
#[test]
fn sdxl_residuals_match_diffusers() {
    let cn = ControlNetModel::load(&fixtures().join("models/controlnet-sdxl"), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(cn.config().addition_embed_type.as_deref(), Some("text_time"));
    let t = tensors("sdxl_forward.safetensors");
    let added = sd_models::unet::AddedCond {
        text_embeds: t["text_embeds"].shallow_clone(),
        time_ids: t["time_ids"].shallow_clone(),
    };
    let out =
        tch::no_grad(|| cn.forward(&t["sample"], &Tensor::from(300.0f32), &t["ctx"], &t["cond"], 0.7, Some(&added)))
            .unwrap();
    let w = worst(&out, &t);
    println!("SDXL: max |Δ| over all residuals: {w:.2e}");
    assert!(w <= 1e-5, "SDXL ControlNet residuals differ from diffusers: {w}");
    // The added conditioning is required: without it the SDXL ControlNet refuses, it does not guess.
    assert!(cn.forward(&t["sample"], &Tensor::from(300.0f32), &t["ctx"], &t["cond"], 0.7, None).is_err());
}
