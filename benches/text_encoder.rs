//! CLIP text encoding at batch 2 (a CFG pair): the tiny fixture encoder (overhead-dominated) and a randomly
//! initialised encoder with CLIP ViT-L/14's sizes (SD1's text encoder: 12 layers, width 768), f32 on the CPU.

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::VarBuilder;
use sd_models::clip::{ClipTextConfig, ClipTextModel};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn ids(batch: i64, vocab: i64) -> Tensor {
    // BOS, a few text tokens, EOS, then EOS padding: what the tokenizer hands over for a short prompt.
    let mut row = vec![vocab - 2, 320, 1125, 539, 320, 1000, vocab - 1];
    row.resize(77, vocab - 1);
    Tensor::from_slice(&row).view([1, 77]).repeat([batch, 1])
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("text_encoder");
    group.sample_size(10);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/sd1/text_encoder");
    let tiny = ClipTextModel::load(&dir, Kind::Float, Device::Cpu).expect("tiny fixture encoder");
    let tiny_ids = ids(2, tiny.config().vocab_size);
    group.bench_function("tiny_fixture_b2", |b| b.iter(|| tch::no_grad(|| tiny.forward(&tiny_ids).expect("forward"))));

    tch::manual_seed(0);
    let cfg = ClipTextConfig::clip_vit_large();
    let vb = VarBuilder::from_init(Kind::Float, Device::Cpu);
    let large = ClipTextModel::from_varbuilder(&vb, &cfg, false).expect("random CLIP-L");
    let large_ids = ids(2, cfg.vocab_size);
    group.bench_function("clip_l_random_b2", |b| {
        b.iter(|| tch::no_grad(|| large.forward(&large_ids).expect("forward")))
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
