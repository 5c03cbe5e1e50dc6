//! Per-block benches, so a slowdown of the whole UNet step (benches/unet.rs) can be traced to its part:
//! attention at every SD1.5 level (512 px, batch 2 as with classifier-free guidance, 8 heads) for each backend,
//! and an SD1.5 level-0 ResNet block, in bf16 and f32. Freshly initialised weights: speed does not depend on values.

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::weights::VarBuilder;
use sd_models::attention::{attention, AttentionMode};
use sd_models::nn::Activation;
use sd_models::unet::resnet::{ResnetBlock2D, ResnetOpts};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// (name, query tokens, key tokens, head dim) of SD1.5's attention layers at 512 px.
const LEVELS: [(&str, i64, i64, i64); 6] = [
    ("l0_self_4096x40", 4096, 4096, 40),
    ("l0_cross_4096x40", 4096, 77, 40),
    ("l1_self_1024x80", 1024, 1024, 80),
    ("l1_cross_1024x80", 1024, 77, 80),
    ("l2_self_256x160", 256, 256, 160),
    ("mid_self_64x160", 64, 64, 160),
];

fn attention_levels(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("attention_sd15_512px");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for kind in [Kind::BFloat16, Kind::Float] {
        for (name, lq, lk, d) in LEVELS {
            tch::manual_seed(0);
            let q = Tensor::randn([2, 8, lq, d], (kind, Device::Cpu));
            let k = Tensor::randn([2, 8, lk, d], (kind, Device::Cpu));
            let v = Tensor::randn([2, 8, lk, d], (kind, Device::Cpu));
            for (mode_name, mode) in
                [("sdpa", AttentionMode::Sdpa), ("matmul", AttentionMode::Matmul(0)), ("fused", AttentionMode::Fused)]
            {
                group.bench_function(format!("{name}_{kind:?}_{mode_name}"), |b| {
                    b.iter(|| attention(&q, &k, &v, None, false, mode).expect("attention"))
                });
            }
        }
    }
    group.finish();
}

fn resnet_block(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("resnet_sd15_l0_320ch_64x64_b2");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let opts = ResnetOpts {
        temb: 1280,
        groups: 32,
        eps: 1e-5,
        act: Activation::Silu,
        scale_shift: false,
        output_scale_factor: 1.0,
    };
    for kind in [Kind::BFloat16, Kind::Float] {
        tch::manual_seed(0);
        let vb = VarBuilder::from_init(kind, Device::Cpu);
        let block = ResnetBlock2D::new(&vb, 320, 320, &opts).expect("resnet block");
        let x = Tensor::randn([2, 320, 64, 64], (kind, Device::Cpu));
        let temb = Tensor::randn([2, 1280], (kind, Device::Cpu));
        group.bench_function(format!("{kind:?}"), |b| b.iter(|| block.forward(&x, &temb).expect("forward")));
    }
    group.finish();
}

criterion_group!(benches, attention_levels, resnet_block);
criterion_main!(benches);
