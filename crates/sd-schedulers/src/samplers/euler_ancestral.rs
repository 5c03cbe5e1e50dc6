//! Euler ancestral (k-diffusion `sample_euler_ancestral`, eta = 1) — diffusers `EulerAncestralDiscreteScheduler`.
//! Step noise: one `randn` of the sample's shape per step, after the deterministic part (diffusers' order).

use crate::choice::Schedule;
use crate::common::{f32, k_denoised, k_euler, step_noise};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::ksched;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "EulerAncestralDiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
    ],
    defaults: |_| {},
    unsupported: &[],
};

pub static EULER_A: Descriptor = Descriptor {
    name: "euler-a",
    a1111: &["Euler a"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "Euler ancestral (adds fresh noise every step)",
    build: |d, c| boxed(EulerAncestral::new(d, c)),
};

pub struct EulerAncestral {
    state: SamplerState,
    train: TrainSchedule,
}

impl EulerAncestral {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
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
