//! DDPM ancestral sampling (Ho et al. 2020, arXiv 2006.11239, eqs. 6–7) — diffusers `DDPMScheduler`. Draws one
//! `randn` per step while t > 0. The previous timestep is the next entry of the schedule.

use crate::common::{f32, lin2, step_noise, StepIndex};
use crate::samplers::ddim::{clip_x0, int_timestep, x0_eps};
use crate::schedule::{check_steps, spaced_timesteps_int, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Ddpm {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    idx: StepIndex,
}

impl Ddpm {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        let pred = cfg.prediction()?;
        match cfg.variance_type.as_deref().unwrap_or("fixed_small") {
            "fixed_small" | "fixed_small_log" | "fixed_large" => {}
            other => bail!("DDPM variance_type {other:?} is not supported (fixed_small, fixed_small_log, fixed_large are)"),
        }
        let train = TrainSchedule::new_exact_zero_snr(&cfg)?;
        Ok(Self { name: name.into(), cfg, pred, train, timesteps: vec![], idx: StepIndex::default() })
    }
}

impl Scheduler for Ddpm {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        self.timesteps = spaced_timesteps_int(&self.cfg, n)?;
        self.idx.reset();
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, gen: &mut TorchGenerator) -> Result<Tensor> {
        let i = self.idx.get(&self.timesteps, timestep)?;
        ensure!(i < self.timesteps.len(), "step called after the last timestep");
        let t = int_timestep(self.timesteps[i], &self.train)?;
        let prev_t = if i + 1 < self.timesteps.len() { self.timesteps[i + 1] as i64 } else { -1 };
        let a_t = self.train.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 { self.train.alphas_cumprod[prev_t as usize] } else { 1.0 };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let sample = f32(sample)?;
        let (x0, _) = x0_eps(self.pred, &sample, &f32(model_output)?, a_t)?;
        let x0 = clip_x0(&self.cfg, x0)?;
        let mut prev = lin2(a_prev.sqrt() * cur_beta / b_t, &x0, cur_alpha.sqrt() * b_prev / b_t, &sample)?;
        if t > 0 {
            let noise = step_noise(model_output, gen);
            let variance = (b_prev / b_t * cur_beta).max(1e-20);
            let std = match self.cfg.variance_type.as_deref().unwrap_or("fixed_small") {
                "fixed_small_log" => (0.5 * variance.ln()).exp(),
                "fixed_large" => cur_beta.sqrt(),
                _ => variance.sqrt(),
            };
            prev = prev.f_add(&noise.f_mul_scalar(std)?)?;
        }
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.train.alphas_cumprod[int_timestep(timestep, &self.train)? as usize];
        lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
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
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        ensure!(!timesteps.is_empty(), "a custom timestep list must not be empty");
        ensure!(timesteps.windows(2).all(|w| w[1] < w[0]), "custom timesteps must be in descending order");
        ensure!(timesteps[0] < self.cfg.num_train_timesteps as f64, "custom timesteps must start below num_train_timesteps");
        self.timesteps = timesteps.iter().map(|t| t.trunc()).collect();
        self.idx.reset();
        Ok(())
    }
}
