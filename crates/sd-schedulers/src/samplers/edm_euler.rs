//! Euler in the EDM parameterisation (Karras et al. 2022, arXiv 2206.00364, Table 1 preconditioning) — diffusers
//! `EDMEulerScheduler`, for EDM-trained models (e.g. Playground v2.5). Timesteps are c_noise = ¼·ln σ, not
//! discrete training steps, so it does not suit ordinary SD 1.x/2.x/XL UNets.

use crate::choice::Schedule;
use crate::common::{f32, k_euler, lin2};
use crate::config::{FinalSigmas, SigmaSchedule};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::schedule::np_linspace;
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Kind, Tensor};

pub static CLASS: Class = Class {
    name: "EDMEulerScheduler",
    keys: &[
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "sigma_schedule",
        "num_train_timesteps",
        "prediction_type",
        "rho",
        "final_sigmas_type",
    ],
    defaults: |c| {
        c.sigma_min = Some(0.002);
        c.sigma_max = Some(80.0);
    },
    unsupported: &[],
};

pub static EDM_EULER: Descriptor = Descriptor {
    name: "edm-euler",
    a1111: &["EDM Euler"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal],
    options: &[],
    models: Models::Unet,
    description: "Euler for EDM-parameterised models (Playground v2.5); not for ordinary SD UNets",
    build: |d, c| boxed(EdmEuler::new(d, c)),
};

/// A k-diffusion-family sampler (x_t = x_0 + σ·ε, so the family's `add_noise`), with EDM's own starting noise and
/// input scaling, and no training schedule.
pub struct EdmEuler {
    state: SamplerState,
    sigma_min: f64,
    sigma_max: f64,
}

impl EdmEuler {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        let cfg = &state.cfg;
        ensure!(
            state.pred != Prediction::Sample,
            "EDM Euler supports prediction_type epsilon or v_prediction, not \"sample\""
        );
        let (sigma_min, sigma_max) = (cfg.sigma_min.unwrap_or(0.002), cfg.sigma_max.unwrap_or(80.0));
        ensure!(sigma_min > 0.0 && sigma_max > sigma_min, "EDM Euler needs 0 < sigma_min < sigma_max");
        Ok(Self { state, sigma_min, sigma_max })
    }
}

impl Scheduler for EdmEuler {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        ensure!(n > 0, "number of inference steps must be at least 1 (got 0)");
        let cfg = &self.state.cfg;
        let mut sig: Vec<f64> = match cfg.sigma_schedule {
            SigmaSchedule::Karras => {
                let rho = cfg.rho;
                let (lo, hi) = (self.sigma_min.powf(1.0 / rho), self.sigma_max.powf(1.0 / rho));
                np_linspace(0.0, 1.0, n).into_iter().map(|r| ((hi + r * (lo - hi)).powf(rho) as f32) as f64).collect()
            }
            SigmaSchedule::Exponential => {
                let v =
                    Tensor::f_linspace(self.sigma_min.ln(), self.sigma_max.ln(), n as i64, (Kind::Float, Device::Cpu))?
                        .f_exp()?
                        .f_flip([0])?;
                Vec::<f64>::try_from(v.f_to_kind(Kind::Double)?)?
            }
        };
        let timesteps = sig.iter().map(|s| (0.25 * (*s as f32).ln()) as f64).collect();
        let last = match cfg.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => sig[sig.len() - 1],
        };
        sig.push(last);
        self.state.set_schedule(timesteps, sig);
        Ok(())
    }
    /// √(σ_max² + 1): EDM starts from the largest sigma whatever the spacing.
    fn init_noise_sigma(&self) -> f64 {
        (self.sigma_max * self.sigma_max + 1.0).sqrt()
    }
    /// EDM's c_in = 1 / √(σ² + σ_data²) instead of the k-diffusion 1 / √(σ² + 1).
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)?;
        let s = self.state.sigmas[i];
        let sd = self.state.cfg.sigma_data;
        Ok(sample.f_mul_scalar(1.0 / (s * s + sd * sd).sqrt())?)
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
        let (s, next) = (self.state.sigmas[i], self.state.sigmas[i + 1]);
        let sd = self.state.cfg.sigma_data;
        let c_skip = sd * sd / (s * s + sd * sd);
        let c_out =
            s * sd / (s * s + sd * sd).sqrt() * if self.state.pred == Prediction::VPrediction { -1.0 } else { 1.0 };
        let x0 = lin2(c_skip, &sample, c_out, &f32(model_output)?)?;
        let prev = k_euler(&sample, &x0, s, next)?;
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
