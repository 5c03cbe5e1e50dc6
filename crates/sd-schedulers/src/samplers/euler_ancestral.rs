//! Euler ancestral (k-diffusion `sample_euler_ancestral`, eta = 1) — diffusers `EulerAncestralDiscreteScheduler`.
//! Step noise: one `randn` of the sample's shape per step, after the deterministic part (diffusers' order).

use crate::common::{f32, k_denoised, k_scale, noise_index, step_noise, StepIndex};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct EulerAncestral {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    sched: KSchedule,
    idx: StepIndex,
}

impl EulerAncestral {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        let pred = cfg.prediction()?;
        anyhow::ensure!(
            pred != Prediction::Sample,
            "Euler a (EulerAncestralDiscreteScheduler) does not support prediction_type \"sample\" (diffusers neither)"
        );
        let train = TrainSchedule::new(&cfg)?;
        Ok(Self { name: name.into(), cfg, pred, train, sched: KSchedule::default(), idx: StepIndex::default() })
    }
}

impl Scheduler for EulerAncestral {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let mut plain = self.cfg.clone();
        plain.interpolation_type = "linear".into();
        self.sched = ksched::euler_schedule(&plain, &self.train, n, 0.0)?;
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
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, gen: &mut TorchGenerator) -> Result<Tensor> {
        let steps = self.sched.sigmas.len().saturating_sub(1);
        let i = self.idx.for_step(&self.sched.timesteps, timestep, steps)?;
        let sample = f32(sample)?;
        let (from, to) = (self.sched.sigmas[i], self.sched.sigmas[i + 1]);
        let x0 = k_denoised(self.pred, &sample, model_output, from)?;
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = sample.f_sub(&x0)?.f_div_scalar(from)?;
        let prev = sample.f_add(&derivative.f_mul_scalar(sigma_down - from)?)?;
        let noise = step_noise(model_output, gen);
        let prev = prev.f_add(&noise.f_mul_scalar(sigma_up)?)?;
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
