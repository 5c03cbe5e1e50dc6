//! Euler (Karras et al. 2022, Algorithm 2 without churn) — diffusers `EulerDiscreteScheduler`.

use crate::common::{f32, k_denoised, k_scale, StepIndex};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Euler {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    sched: KSchedule,
    idx: StepIndex,
}

impl Euler {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        let train = TrainSchedule::new(&cfg)?;
        Ok(Self { name: name.into(), cfg, pred, train, sched: KSchedule::default(), idx: StepIndex::default() })
    }

    fn continuous_v(&self) -> bool {
        self.cfg.timestep_type == "continuous" && self.pred == Prediction::VPrediction
    }

    fn finish(&mut self, mut s: KSchedule) {
        if self.continuous_v() {
            let n = s.sigmas.len() - 1;
            s.timesteps = s.sigmas[..n].iter().map(|x| (0.25 * (*x as f32).ln()) as f64).collect();
        }
        self.sched = s;
        self.idx.reset();
    }
}

impl Scheduler for Euler {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let last = ksched::final_sigma(&self.cfg, &self.train)?;
        let s = ksched::euler_schedule(&self.cfg, &self.train, n, last)?;
        self.finish(s);
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
        let (sigma, next) = (self.sched.sigmas[i], self.sched.sigmas[i + 1]);
        let x0 = k_denoised(self.pred, &sample, model_output, sigma)?;
        let derivative = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
        let prev = sample.f_add(&derivative.f_mul_scalar(next - sigma)?)?;
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = crate::common::noise_index(&self.idx, &self.sched.timesteps, timestep)?;
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
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }
    fn accepts_custom_sigmas(&self) -> bool {
        true
    }
    fn set_custom_sigmas(&mut self, sigmas: &[f64], _device: Device) -> Result<()> {
        let s = ksched::from_sigmas(&self.train, sigmas)?;
        self.finish(s);
        Ok(())
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        anyhow::ensure!(
            !(self.cfg.use_karras_sigmas || self.cfg.use_exponential_sigmas || self.cfg.use_beta_sigmas),
            "custom timesteps cannot be combined with Karras / exponential / beta sigmas"
        );
        let last = ksched::final_sigma(&self.cfg, &self.train)?;
        let s = ksched::from_timesteps(&self.train, timesteps, last)?;
        self.finish(s);
        Ok(())
    }
}
