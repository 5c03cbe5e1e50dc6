//! Weight loading: a generated ~128 MB f32 safetensors file loaded through the memory-mapped VarBuilder,
//! as f32 and converted to bf16 at load.

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::weights::VarBuilder;
use tch::{Device, Kind};

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, shapes) = sd_benches::synthetic_weights(dir.path(), 128).expect("write weights");
    let mut group = c.benchmark_group("weights");
    group.sample_size(10);
    for kind in [Kind::Float, Kind::BFloat16] {
        group.bench_function(format!("load_128MB_{kind:?}"), |b| {
            b.iter(|| {
                let vb = VarBuilder::from_safetensors(std::slice::from_ref(&path), kind, Device::Cpu).expect("open");
                let ts: Vec<_> = shapes.iter().map(|(n, s)| vb.get(s, n).expect("get")).collect();
                vb.finish("bench", &[]).expect("finish");
                ts
            })
        });
    }
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
