//! Linear multistep (k-diffusion `sample_lms`, order 4) — diffusers `LMSDiscreteScheduler`. The coefficients are
//! integrals of Lagrange basis polynomials over [σ_i, σ_{i+1}]; diffusers integrates them numerically
//! (scipy `quad`), here 8-point Gauss–Legendre integrates the ≤ cubic polynomials exactly.

use crate::common::{f32, k_denoised, k_scale, noise_index, StepIndex};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use std::collections::VecDeque;
use tch::{Device, Tensor};

const ORDER: usize = 4;

pub struct Lms {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    sched: KSchedule,
    idx: StepIndex,
    derivatives: VecDeque<Tensor>,
}

/// ∫_{a}^{b} f with 8-point Gauss–Legendre.
fn gauss8(a: f64, b: f64, f: impl Fn(f64) -> f64) -> f64 {
    const X: [f64; 4] = [0.183_434_642_495_649_8, 0.525_532_409_916_329, 0.796_666_477_413_626_7, 0.960_289_856_497_536_3];
    const W: [f64; 4] = [0.362_683_783_378_362, 0.313_706_645_877_887_3, 0.222_381_034_453_374_5, 0.101_228_536_290_376_3];
    let (m, h) = ((a + b) / 2.0, (b - a) / 2.0);
    let mut s = 0.0;
    for k in 0..4 {
        s += W[k] * (f(m - h * X[k]) + f(m + h * X[k]));
    }
    s * h
}

impl Lms {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        let train = TrainSchedule::new(&cfg)?;
        Ok(Self { name: name.into(), cfg, pred, train, sched: KSchedule::default(), idx: StepIndex::default(), derivatives: VecDeque::new() })
    }

    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = &self.sched.sigmas;
        let basis = |tau: f64| {
            let mut prod = 1.0;
            for k in 0..order {
                if k != current {
                    prod *= (tau - s[t - k]) / (s[t - current] - s[t - k]);
                }
            }
            prod
        };
        gauss8(s[t], s[t + 1], basis)
    }
}

impl Scheduler for Lms {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let mut c = self.cfg.clone();
        c.interpolation_type = "linear".into();
        // LMS's Karras conversion ignores config sigma_min/max (it has none)
        c.sigma_min = None;
        c.sigma_max = None;
        self.sched = ksched::euler_schedule(&c, &self.train, n, 0.0)?;
        self.derivatives.clear();
        self.idx.reset();
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.sched.timesteps
    }
    fn sigmas(&self) -> &[f64] {
        &self.sched.sigmas
    }
    fn init_noise_sigma(&self) -> f64 {
        ksched::init_noise_sigma(&self.cfg, &self.sched.sigmas)
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.idx.get(&self.sched.timesteps, timestep)?;
        k_scale(sample, self.sched.sigmas[i])
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, _gen: &mut TorchGenerator) -> Result<Tensor> {
        let steps = self.sched.sigmas.len().saturating_sub(1);
        let i = self.idx.for_step(&self.sched.timesteps, timestep, steps)?;
        let sample = f32(sample)?;
        let sigma = self.sched.sigmas[i];
        let x0 = k_denoised(self.pred, &sample, &f32(model_output)?, sigma)?;
        let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
        self.derivatives.push_back(d);
        if self.derivatives.len() > ORDER {
            self.derivatives.pop_front();
        }
        // as diffusers: the order follows the step index; after an img2img start the history is shorter and the
        // zip with it keeps only the first coefficients
        let order = (i + 1).min(ORDER);
        let mut prev = sample.shallow_clone();
        for (cur, d) in self.derivatives.iter().rev().take(order).enumerate() {
            prev = prev.f_add(&d.f_mul_scalar(self.coefficient(order, i, cur))?)?;
        }
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = noise_index(&self.idx, &self.sched.timesteps, timestep)?;
        Ok(original.f_add(&noise.f_mul_scalar(self.sched.sigmas[i])?)?)
    }
    fn order(&self) -> usize {
        1
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.idx.begin = Some(begin_index);
    }
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
}
