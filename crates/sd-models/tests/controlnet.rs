//! ControlNetModel against diffusers (fixtures/controlnet/forward.safetensors, from
//! scripts/fixtures/gen_88_controlnet.py): a tiny random ControlNet for the tiny SD1 UNet, every weight random (the
//! zero convolutions too), residuals for one input at conditioning scale 0.8. f32, max abs error ≤ 1e-5.

use sd_models::controlnet::ControlNetModel;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

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
