//! Euler ancestral (k-diffusion `sample_euler_ancestral`, eta = 1) — diffusers `EulerAncestralDiscreteScheduler`.
//! Step noise: one `randn` of the sample's shape per step, after the deterministic part (diffusers' order).

use crate::common::{f32, k_denoised, k_euler, step_noise};
use crate::ksched;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct EulerAncestral {
    state: SamplerState,
    train: TrainSchedule,
}

impl EulerAncestral {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        let state = SamplerState::new(name, cfg, Family::KDiffusion)?;
        anyhow::ensure!(
            state.pred != Prediction::Sample,
            "Euler a (EulerAncestralDiscreteScheduler) does not support prediction_type \"sample\" (diffusers neither)"
        );
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train })
    }
}

impl Scheduler for EulerAncestral {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = ksched::linear_schedule(&self.state.cfg, &self.train, n)?;
        self.state.set_schedule(s.timesteps, s.sigmas);
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let sample = f32(sample)?;
        let (from, to) = (self.state.sigmas[i], self.state.sigmas[i + 1]);
        let x0 = k_denoised(self.state.pred, &sample, model_output, from)?;
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let prev = k_euler(&sample, &x0, from, sigma_down)?;
        let noise = step_noise(model_output, gen);
        let prev = prev.f_add(&noise.f_mul_scalar(sigma_up)?)?;
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
