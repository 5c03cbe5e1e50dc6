//! Splitting the UNet's block stack (`sd_models::unet::split`): the capturing forward is the plain forward bit for
//! bit, and a shallow pass around the state captured from the same inputs gives the same output, at every split
//! point of the tiny SD1 (two levels, cross-attention in the deeper one) and SDXL (text-time conditioning) fixture
//! UNets. A split point outside the up path is refused.

use sd_models::unet::{AddedCond, SplitPoint, UNet2DConditionModel, UNetInputs};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn load(model: &str) -> UNet2DConditionModel {
    let dir = Path::new(FIXTURES).join("models").join(model).join("unet");
    UNet2DConditionModel::load(&dir, Kind::Float, Device::Cpu).expect("fixture UNet")
}

fn check(model: &str, ctx_dim: i64, added: Option<&AddedCond>) {
    tch::manual_seed(3);
    let unet = load(model);
    let cfg = unet.config().clone();
    let sample = Tensor::randn([2, cfg.in_channels, 16, 16], (Kind::Float, Device::Cpu));
    let ctx = Tensor::randn([2, 7, ctx_dim], (Kind::Float, Device::Cpu));
    let t = Tensor::from(501.0f32);
    let inputs = UNetInputs { added, ..Default::default() };
    let plain = unet.forward_with(&sample, &t, &ctx, &inputs).expect("forward");
    let layers = unet.up_block_layers();
    for (up_block, &n) in layers.iter().enumerate() {
        for layer in 0..n {
            let at = SplitPoint { up_block, layer };
            let (out, deep) = unet.forward_capture(&sample, &t, &ctx, &inputs, at).expect("capture");
            assert!(out.equal(&plain), "{model} {at:?}: the capturing forward differs from the plain one");
            let shallow = unet.forward_shallow(&sample, &t, &ctx, &inputs, at, &deep).expect("shallow");
            let diff = (&shallow - &plain).abs().max().double_value(&[]);
            assert!(diff == 0.0, "{model} {at:?}: shallow pass around its own state differs by {diff}");
        }
    }
    let beyond = SplitPoint { up_block: layers.len(), layer: 0 };
    let err = unet.forward_capture(&sample, &t, &ctx, &inputs, beyond).expect_err("outside the up path");
    assert!(format!("{err:#}").contains("up blocks"), "{err:#}");
    let beyond = SplitPoint { up_block: 0, layer: layers[0] };
    assert!(unet.check_split(beyond).is_err());
}

#[test]
fn shallow_pass_around_its_own_state_is_the_full_forward_sd1() {
    check("sd1", 16, None);
}

#[test]
fn shallow_pass_around_its_own_state_is_the_full_forward_sdxl() {
    let unet = load("sdxl");
    let cfg = unet.config().clone();
    let time_dim = cfg.addition_time_embed_dim.expect("sdxl fixture has text_time");
    let pooled = cfg.projection_class_embeddings_input_dim.expect("projection dim") - 6 * time_dim;
    drop(unet);
    let added = AddedCond {
        text_embeds: Tensor::randn([2, pooled], (Kind::Float, Device::Cpu)),
        time_ids: Tensor::from_slice(&[64.0f32, 64.0, 0.0, 0.0, 64.0, 64.0]).reshape([1, 6]).repeat([2, 1]),
    };
    check("sdxl", 32, Some(&added));
}
