//! One UNet denoising step (batch 2, as with classifier-free guidance): the tiny SD1 fixture UNet, and an
//! SD1.5-sized UNet (configs/sd15_unet.json, randomly initialised: speed does not depend on the values) at
//! 256×256 pixels (32×32 latents) in f32 and bf16.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use sd_core::weights::VarBuilder;
use sd_models::unet::{UNet2DConditionModel, UNetConfig};
use std::path::Path;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn step(unet: &UNet2DConditionModel, x: &Tensor, t: &Tensor, ctx: &Tensor) -> Tensor {
    tch::no_grad(|| unet.forward(x, t, ctx, None, None).expect("forward"))
}

fn tiny(c: &mut Criterion) {
    let dir = Path::new(ROOT).join("../fixtures/models/sd1/unet");
    let unet = UNet2DConditionModel::load(&dir, Kind::Float, Device::Cpu).expect("tiny sd1 unet");
    tch::manual_seed(0);
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Float, Device::Cpu));
    let ctx = Tensor::randn([2, 77, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from(500.0f32);
    c.bench_function("unet/tiny_sd1_16x16_b2_f32", |b| b.iter(|| step(&unet, &x, &t, &ctx)));
}

fn sd15(c: &mut Criterion) {
    let cfg = UNetConfig::from_file(&Path::new(ROOT).join("configs/sd15_unet.json")).expect("sd15 config");
    let mut group = c.benchmark_group("unet");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for kind in [Kind::Float, Kind::BFloat16] {
        tch::manual_seed(0);
        let vb = VarBuilder::from_init(kind, Device::Cpu);
        let unet = UNet2DConditionModel::from_varbuilder(&vb, &cfg).expect("sd15 unet");
        let x = Tensor::randn([2, 4, 32, 32], (kind, Device::Cpu));
        let ctx = Tensor::randn([2, 77, 768], (kind, Device::Cpu));
        let t = Tensor::from(500.0f32);
        group.bench_function(format!("sd15_256px_b2_{kind:?}"), |b| b.iter(|| step(&unet, &x, &t, &ctx)));
    }
    group.finish();
}

criterion_group!(benches, tiny, sd15);
criterion_main!(benches);
