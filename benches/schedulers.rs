//! Sampler overhead: one full 20-step loop (scale_model_input + step, with a fixed stand-in model output) on a
//! 2×4×128×128 latent (SDXL batch with CFG), CPU f32. Throughput is reported in sampler steps (model evaluations).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sd_core::TorchGenerator;
use tch::{Device, Kind};

const STEPS: usize = 20;

fn sampler_loop(c: &mut Criterion) {
    let cfg = serde_json::json!({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading"
    });
    let shape = [2i64, 4, 128, 128];
    let mut group = c.benchmark_group("sampler_step_2x4x128x128");
    group.sample_size(10);
    for name in ["euler", "euler-a", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "heun"] {
        let choice: sd_schedulers::SamplerChoice = name.parse().expect("sampler name");
        let mut s = choice.build(&cfg, &sd_schedulers::SamplerOptions::default()).expect("build");
        let mut g = TorchGenerator::new(0);
        let x0 = g.randn(&shape, Kind::Float, Device::Cpu);
        let out = g.randn(&shape, Kind::Float, Device::Cpu);
        s.set_timesteps(STEPS, Device::Cpu).expect("set_timesteps");
        // second-order samplers run 2n - 1 model evaluations
        group.throughput(Throughput::Elements(s.timesteps().len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                s.set_timesteps(STEPS, Device::Cpu).expect("set_timesteps");
                let mut x = &x0 * s.init_noise_sigma();
                for t in s.timesteps().to_vec() {
                    let _scaled = s.scale_model_input(&x, t).expect("scale");
                    x = s.step(&out, t, &x, &mut g).expect("step");
                }
                x
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sampler_loop);
criterion_main!(benches);
