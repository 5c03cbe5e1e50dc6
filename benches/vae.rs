//! VAE decode of a 32×32 latent (256 px for SD1.5) in bf16: the tiny fixture VAE, an SD1.5-size AutoencoderKL
//! with freshly initialised weights (benches/configs/sd15_vae.json), and TAESD with its real weights.

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::weights::VarBuilder;
use sd_models::vae::{AutoencoderKL, AutoencoderTiny, VaeConfig};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn decode(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kind = Kind::BFloat16;
    let z = Tensor::randn([1, 4, 32, 32], (kind, Device::Cpu));
    let mut group = c.benchmark_group("vae_decode_latent32_bf16");
    group.sample_size(10);

    let tiny = AutoencoderKL::load(&root.join("../fixtures/models/sd1/vae"), kind, Device::Cpu).expect("tiny VAE");
    group.bench_function("tiny_fixture_vae", |b| b.iter(|| tiny.decode(&z).expect("decode")));

    let cfg = VaeConfig::from_file(&root.join("configs/sd15_vae.json")).expect("config");
    tch::manual_seed(0);
    let vb = VarBuilder::from_init(kind, Device::Cpu);
    let sd15 = AutoencoderKL::from_varbuilder(&vb, &cfg).expect("sd15 VAE");
    group.bench_function("sd15_vae_256px", |b| b.iter(|| sd15.decode(&z).expect("decode")));

    let taesd_dir =
        std::env::var_os("SD_TAESD_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("../../shared/data/taesd"));
    let taesd = AutoencoderTiny::load_taesd_dir(&taesd_dir, false, kind, Device::Cpu)
        .unwrap_or_else(|e| panic!("real TAESD weights needed in {} (or SD_TAESD_DIR): {e:#}", taesd_dir.display()));
    group.bench_function("taesd_256px", |b| b.iter(|| taesd.decode(&z).expect("decode")));
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
