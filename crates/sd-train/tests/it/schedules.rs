//! Learning-rate schedules (diffusers `get_scheduler` LambdaLR factors) and the EMA decay ramp, against values
//! worked out by hand from diffusers' formulas.

use sd_train::ema::Ema;
use sd_train::lr::{lr_factor, LrSchedule};

#[test]
fn warmup_then_constant_or_cosine() {
    let f = |s, step| lr_factor(s, step, 10, 110);
    for s in [LrSchedule::Constant, LrSchedule::Cosine] {
        assert_eq!(f(s, 0), 0.0, "first step of a warmup has lr 0, as diffusers");
        assert!((f(s, 5) - 0.5).abs() < 1e-12);
        assert!((f(s, 10) - 1.0).abs() < 1e-12);
    }
    assert_eq!(f(LrSchedule::Constant, 100), 1.0);
    assert!((f(LrSchedule::Cosine, 60) - 0.5).abs() < 1e-12, "half way through the cosine");
    assert!((f(LrSchedule::Cosine, 35) - (0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos()))).abs() < 1e-12);
    assert!(f(LrSchedule::Cosine, 110).abs() < 1e-12);
    assert_eq!(lr_factor(LrSchedule::Constant, 0, 0, 5), 1.0, "no warmup: full rate at once");
}

#[test]
fn ema_decay_ramp_and_update() {
    let w = tch::Tensor::from_slice(&[1.0f32, 2.0]);
    let mut ema = Ema::new(vec![("w".into(), w.copy())], 0.9999).expect("ema");
    assert_eq!(ema.decay_at(1), 0.0, "diffusers' first EMA step copies the weights");
    assert!((ema.decay_at(2) - 2.0 / 11.0).abs() < 1e-12);
    assert!((ema.decay_at(11) - 11.0 / 20.0).abs() < 1e-12);
    assert_eq!(ema.decay_at(1_000_000), 0.9999);
    ema.update(&[("w".into(), tch::Tensor::from_slice(&[3.0f32, 2.0]))], 1).expect("update");
    let got = Vec::<f32>::try_from(&ema.weights()[0].1).expect("vec");
    assert_eq!(got, [3.0, 2.0], "first step copies");
    ema.update(&[("w".into(), tch::Tensor::from_slice(&[5.0f32, 2.0]))], 2).expect("update");
    let got = Vec::<f32>::try_from(&ema.weights()[0].1).expect("vec");
    let d = 2.0 / 11.0;
    assert!((got[0] as f64 - (3.0 * d + 5.0 * (1.0 - d))).abs() < 1e-6 && got[1] == 2.0, "{got:?}");
}
