//! Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 without churn) — diffusers `HeunDiscreteScheduler`.
//! Every timestep after the first appears twice in `timesteps()`: the predictor then the corrector evaluation.

use crate::choice::Schedule;
use crate::common::{f32, k_denoised};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::ksched::{self, interleave_tail, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "HeunDiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "clip_sample",
        "clip_sample_range",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
    },
    unsupported: &[],
};

pub static HEUN: Descriptor = Descriptor {
    name: "heun",
    a1111: &["Heun"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &Schedule::ALL,
    options: &[],
    models: Models::Unet,
    description: "Heun (second order, two model calls per step)",
    build: |d, c| boxed(Heun::new(d, c)),
};

pub struct Heun {
    state: SamplerState,
    train: TrainSchedule,
    /// (derivative, dt, sample) of the pending predictor step.
    first: Option<(Tensor, f64, Tensor)>,
}

impl Heun {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train, first: None })
    }

    fn install(&mut self, s: KSchedule) {
        // sigmas: [s0, s1, s1, …, s_{n-1}, s_{n-1}, 0]; timesteps: [t0, t1, t1, …]
        let n = s.sigmas.len();
        let mut sig = interleave_tail(&s.sigmas[..n - 1]);
        sig.push(s.sigmas[n - 1]);
        self.state.set_schedule(interleave_tail(&s.timesteps), sig);
        self.first = None;
    }
}

impl Scheduler for Heun {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = ksched::euler_schedule(&self.state.cfg, &self.train, n, 0.0)?;
        self.install(s);
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
        let out = f32(model_output)?;
        let pred = self.state.pred;
        let prev = match self.first.take() {
            None => {
                let (sigma, next) = (self.state.sigmas[i], self.state.sigmas[i + 1]);
                let x0 = self.clip(k_denoised(pred, &sample, &out, sigma)?)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
                let dt = next - sigma;
                let prev = sample.f_add(&d.f_mul_scalar(dt)?)?;
                self.first = Some((d, dt, sample));
                prev
            }
            Some((d_prev, dt, base)) => {
                ensure!(i >= 1, "Heun corrector step at index 0");
                let next = self.state.sigmas[i];
                let x0 = self.clip(k_denoised(pred, &sample, &out, next)?)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(next)?;
                let d = d_prev.f_add(&d)?.f_div_scalar(2.0)?;
                base.f_add(&d.f_mul_scalar(dt)?)?
            }
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn order(&self) -> usize {
        2
    }
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        let s = ksched::from_timesteps(&self.state.cfg, &self.train, timesteps, 0.0)?;
        self.install(s);
        Ok(())
    }
}

impl Heun {
    fn clip(&self, x0: Tensor) -> Result<Tensor> {
        let cfg = &self.state.cfg;
        if cfg.clip_sample {
            Ok(x0.f_clamp(-cfg.clip_sample_range, cfg.clip_sample_range)?)
        } else {
            Ok(x0)
        }
    }
}
