//! Euler (Karras et al. 2022, Algorithm 2 without churn) — diffusers `EulerDiscreteScheduler`.

use crate::choice::Schedule;
use crate::common::{f32, k_denoised, k_euler};
use crate::config::TimestepType;
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "EulerDiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
        "interpolation_type",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "sigma_min",
        "sigma_max",
        "timestep_spacing",
        "timestep_type",
        "steps_offset",
        "rescale_betas_zero_snr",
        "final_sigmas_type",
    ],
    defaults: |_| {},
    unsupported: &[],
};

pub static EULER: Descriptor = Descriptor {
    name: "euler",
    a1111: &["Euler"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "Euler (first order, deterministic)",
    build: |d, c| boxed(Euler::new(d, c)),
};

pub struct Euler {
    state: SamplerState,
    train: TrainSchedule,
}

impl Euler {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train })
    }

    fn continuous_v(&self) -> bool {
        self.state.cfg.timestep_type == TimestepType::Continuous && self.state.pred == Prediction::VPrediction
    }

    fn finish(&mut self, mut s: KSchedule) {
        if self.continuous_v() {
            let n = s.sigmas.len() - 1;
            s.timesteps = s.sigmas[..n].iter().map(|x| (0.25 * (*x as f32).ln()) as f64).collect();
        }
        self.state.set_schedule(s.timesteps, s.sigmas);
    }
}

impl Scheduler for Euler {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let cfg = &self.state.cfg;
        check_steps(cfg, n)?;
        let last = ksched::final_sigma(cfg, &self.train);
        let s = ksched::euler_schedule(cfg, &self.train, n, last)?;
        self.finish(s);
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let sample = f32(sample)?;
        let (sigma, next) = (self.state.sigmas[i], self.state.sigmas[i + 1]);
        let x0 = k_denoised(self.state.pred, &sample, model_output, sigma)?;
        let prev = k_euler(&sample, &x0, sigma, next)?;
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
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
        let cfg = &self.state.cfg;
        let last = ksched::final_sigma(cfg, &self.train);
        let s = ksched::from_timesteps(cfg, &self.train, timesteps, last)?;
        self.finish(s);
        Ok(())
    }
}
