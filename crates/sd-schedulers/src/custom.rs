//! Align-Your-Steps schedules (arXiv 2404.14507) applied to any sampler: the 10-step lists from diffusers'
//! `AysSchedules`, passed as custom sigmas (k-samplers) or custom timesteps (the others), exactly as the diffusers
//! AYS recipe does. Other step counts use the paper's log-linear resampling of the sigma list (an extension:
//! diffusers only ships 10-step lists).

use crate::sigmas::{ays, sigma_to_t};
use crate::{SamplerState, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AysModel {
    Sd,
    Sdxl,
}

/// A sampler whose `set_timesteps(n)` installs the AYS schedule for `n` steps.
pub struct Ays {
    inner: Box<dyn Scheduler>,
    model: AysModel,
}

impl Ays {
    pub fn new(inner: Box<dyn Scheduler>, model: AysModel) -> Self {
        Self { inner, model }
    }

    /// The AYS sigmas for `n` steps, without the final 0.
    pub fn sigmas_for(model: AysModel, n: usize) -> Vec<f64> {
        let base = match model {
            AysModel::Sd => &ays::SD_SIGMAS[..10],
            AysModel::Sdxl => &ays::SDXL_SIGMAS[..10],
        };
        ays::loglinear_resample(base, n)
    }

    pub fn timesteps_for(model: AysModel, n: usize, log_sigmas: &[f64]) -> Vec<f64> {
        if n == 10 {
            return match model {
                AysModel::Sd => ays::SD_TIMESTEPS.to_vec(),
                AysModel::Sdxl => ays::SDXL_TIMESTEPS.to_vec(),
            };
        }
        Self::sigmas_for(model, n).iter().map(|&s| sigma_to_t(s, log_sigmas).round()).collect()
    }
}

/// Every method forwards to the wrapped sampler (including those with defaults, which it may override) except
/// `set_timesteps`.
impl Scheduler for Ays {
    fn state(&self) -> &SamplerState {
        self.inner.state()
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        self.inner.state_mut()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn set_timesteps(&mut self, n: usize, device: Device) -> Result<()> {
        crate::schedule::check_steps(self.inner.config(), n)?;
        if self.inner.accepts_custom_sigmas() {
            let mut s = Self::sigmas_for(self.model, n);
            s.push(0.0);
            self.inner.set_custom_sigmas(&s, device)
        } else {
            let train = crate::schedule::TrainSchedule::new(self.inner.config())?;
            let t = Self::timesteps_for(self.model, n, &train.log_sigmas);
            self.inner.set_custom_timesteps(&t, device)
        }
    }
    fn timesteps(&self) -> &[f64] {
        self.inner.timesteps()
    }
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.inner.scale_model_input(sample, timestep)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        self.inner.step(model_output, timestep, sample, gen)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        self.inner.add_noise(original, noise, timestep)
    }
    fn order(&self) -> usize {
        self.inner.order()
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.inner.set_begin_index(begin_index)
    }
    fn config(&self) -> &SchedulerConfig {
        self.inner.config()
    }
    fn sigmas(&self) -> &[f64] {
        self.inner.sigmas()
    }
    fn set_custom_timesteps(&mut self, t: &[f64], device: Device) -> Result<()> {
        self.inner.set_custom_timesteps(t, device)
    }
    fn set_custom_sigmas(&mut self, s: &[f64], device: Device) -> Result<()> {
        self.inner.set_custom_sigmas(s, device)
    }
    fn accepts_custom_timesteps(&self) -> bool {
        self.inner.accepts_custom_timesteps()
    }
    fn accepts_custom_sigmas(&self) -> bool {
        self.inner.accepts_custom_sigmas()
    }
}
