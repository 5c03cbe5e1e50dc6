//! One DCGAN training step (the seed's GAN, `cargo run --example dcgan`) against PyTorch: weights and inputs are
//! rebuilt from the fixture's seed with the bit-identical generator, then the losses, the discriminator's outputs,
//! the fake batch, and every updated weight and BatchNorm running statistic are compared with what
//! `scripts/fixtures/gen_91_dcgan.py` recorded (sum, sum of squares, first 8 values).

#[path = "../../examples/dcgan/model.rs"]
#[allow(dead_code)]
mod model;

use sd_core::TorchGenerator;
use sd_train::optim::AdamW;
use tch::{Device, Kind, Tensor};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dcgan/step.json");

fn close(what: &str, got: f64, want: f64, tol: f64) -> f64 {
    let err = (got - want).abs() / want.abs().max(1.0);
    assert!(err <= tol, "{what}: got {got}, PyTorch {want} (relative error {err:.2e} > {tol:.0e})");
    err
}

fn check_stats(name: &str, t: &Tensor, want: &serde_json::Value, tol: f64) -> f64 {
    let v: Vec<f64> = Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    let sum: f64 = v.iter().sum();
    let sumsq: f64 = v.iter().map(|x| x * x).sum();
    let mut worst = close(&format!("{name} sum"), sum, want["sum"].as_f64().unwrap(), tol);
    worst = worst.max(close(&format!("{name} sum of squares"), sumsq, want["sumsq"].as_f64().unwrap(), tol));
    for (i, w) in want["head"].as_array().unwrap().iter().enumerate() {
        worst = worst.max(close(&format!("{name}[{i}]"), v[i], w.as_f64().unwrap(), tol));
    }
    worst
}

#[test]
fn one_training_step_matches_pytorch() {
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let batch = f["batch"].as_i64().unwrap();
    let mut gen = TorchGenerator::new(f["seed"].as_u64().unwrap());
    let (mut g, mut d) = (model::generator(Device::Cpu), model::discriminator(Device::Cpu));
    g.init(&mut gen).unwrap();
    d.init(&mut gen).unwrap();
    let real = gen.randn(&[batch, 3, 32, 32], Kind::Float, Device::Cpu).tanh();
    let z = gen.randn(&[batch, model::NZ, 1, 1], Kind::Float, Device::Cpu);
    let mut opt_g = AdamW::new(g.parameters("G"), model::adam()).unwrap();
    let mut opt_d = AdamW::new(d.parameters("D"), model::adam()).unwrap();
    let s = model::train_step(&g, &d, &mut opt_g, &mut opt_d, &real, &z).unwrap();
    let tol = 1e-4;
    let mut worst = 0f64;
    for (k, got) in [
        ("err_d_real", s.err_d_real),
        ("err_d_fake", s.err_d_fake),
        ("err_g", s.err_g),
        ("d_real_mean", s.d_real_mean),
        ("d_fake_mean", s.d_fake_mean),
        ("d_fake_after_mean", s.d_fake_after_mean),
    ] {
        worst = worst.max(close(k, got, f[k].as_f64().unwrap(), tol));
    }
    worst = worst.max(check_stats("fake", &s.fake, &f["fake_stats"], tol));
    let want = f["tensors"].as_object().unwrap();
    let mut state = g.state("G");
    state.extend(d.state("D"));
    assert_eq!(state.len(), want.len(), "tensor count");
    for (name, t) in &state {
        let w = want.get(name).unwrap_or_else(|| panic!("{name} is not in the fixture"));
        worst = worst.max(check_stats(name, t, w, tol));
    }
    eprintln!("worst relative error over {} tensors, losses and outputs: {worst:.2e} (bound {tol:.0e})", state.len());
}
