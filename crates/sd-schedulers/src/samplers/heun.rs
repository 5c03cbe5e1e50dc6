//! Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 without churn) — diffusers `HeunDiscreteScheduler`.
//! Every timestep after the first appears twice in `timesteps()`: the predictor then the corrector evaluation.

use crate::common::{f32, k_denoised, k_scale, noise_index, StepIndex};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Heun {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    idx: StepIndex,
    /// (derivative, dt, sample) of the pending predictor step.
    first: Option<(Tensor, f64, Tensor)>,
}

/// `[x0, x1, x1, x2, x2, …]` (diffusers' `cat([x[:1], x[1:].repeat_interleave(2)])`).
pub fn interleave_tail(v: &[f64]) -> Vec<f64> {
    let mut out = vec![v[0]];
    for x in &v[1..] {
        out.push(*x);
        out.push(*x);
    }
    out
}

impl Heun {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        let train = TrainSchedule::new(&cfg)?;
        Ok(Self { name: name.into(), cfg, pred, train, timesteps: vec![], sigmas: vec![], idx: StepIndex::default(), first: None })
    }

    fn install(&mut self, s: KSchedule) {
        // sigmas: [s0, s1, s1, …, s_{n-1}, s_{n-1}, 0]; timesteps: [t0, t1, t1, …]
        let n = s.sigmas.len();
        let mut sig = interleave_tail(&s.sigmas[..n - 1]);
        sig.push(s.sigmas[n - 1]);
        self.sigmas = sig;
        self.timesteps = interleave_tail(&s.timesteps);
        self.first = None;
        self.idx.reset();
    }
}

impl Scheduler for Heun {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let s = ksched::euler_schedule(&self.cfg, &self.train, n, 0.0)?;
        self.install(s);
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
    fn init_noise_sigma(&self) -> f64 {
        ksched::init_noise_sigma(&self.cfg, &self.sigmas)
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.idx.get(&self.timesteps, timestep)?;
        k_scale(sample, self.sigmas[i])
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, _gen: &mut TorchGenerator) -> Result<Tensor> {
        let i = self.idx.get(&self.timesteps, timestep)?;
        ensure!(i + 1 < self.sigmas.len(), "step called after the last timestep");
        let sample = f32(sample)?;
        let out = f32(model_output)?;
        let prev = match self.first.take() {
            None => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let x0 = self.clip(k_denoised(self.pred, &sample, &out, sigma)?)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
                let dt = next - sigma;
                let prev = sample.f_add(&d.f_mul_scalar(dt)?)?;
                self.first = Some((d, dt, sample));
                prev
            }
            Some((d_prev, dt, base)) => {
                ensure!(i >= 1, "Heun corrector step at index 0");
                let next = self.sigmas[i];
                let x0 = self.clip(k_denoised(self.pred, &sample, &out, next)?)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(next)?;
                let d = d_prev.f_add(&d)?.f_div_scalar(2.0)?;
                base.f_add(&d.f_mul_scalar(dt)?)?
            }
        };
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = noise_index(&self.idx, &self.timesteps, timestep)?;
        Ok(original.f_add(&noise.f_mul_scalar(self.sigmas[i])?)?)
    }
    fn order(&self) -> usize {
        2
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.idx.begin = Some(begin_index);
    }
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        ensure!(
            !(self.cfg.use_karras_sigmas || self.cfg.use_exponential_sigmas || self.cfg.use_beta_sigmas),
            "custom timesteps cannot be combined with Karras / exponential / beta sigmas"
        );
        let s = ksched::from_timesteps(&self.train, timesteps, 0.0)?;
        self.install(s);
        Ok(())
    }
}

impl Heun {
    fn clip(&self, x0: Tensor) -> Result<Tensor> {
        if self.cfg.clip_sample {
            Ok(x0.f_clamp(-self.cfg.clip_sample_range, self.cfg.clip_sample_range)?)
        } else {
            Ok(x0)
        }
    }
}
