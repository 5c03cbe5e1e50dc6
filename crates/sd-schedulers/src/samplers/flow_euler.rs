//! Euler for rectified-flow models (Stable Diffusion 3 / 3.5) — diffusers `FlowMatchEulerDiscreteScheduler`.
//!
//! A flow-matching model predicts the velocity v = ε − x₀ of the straight path x_σ = (1 − σ)·x₀ + σ·ε, σ ∈ [0, 1];
//! one step moves the sample along it: x ← x + (σ_next − σ)·v. The schedule is σ = t / T (T the training length)
//! bent towards noise by the static `shift` s: σ' = s·σ / (1 + (s − 1)·σ), and the model is shown σ'·T as its
//! timestep. Resolution-dependent ("dynamic") shifting, inverted sigmas, a terminal stretch and stochastic steps
//! are options of the class SD3 does not use; a config setting them is refused (`unsupported`).

use crate::choice::Schedule;
use crate::common::{f32, lin2};
use crate::descriptor::{boxed, Class, Descriptor, Lit, NO_PRESET};
use crate::ksched;
use crate::schedule::{check_steps, np_linspace};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "FlowMatchEulerDiscreteScheduler",
    keys: &["num_train_timesteps", "shift", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"],
    defaults: |_| {},
    unsupported: &[
        ("use_dynamic_shifting", Lit::Bool(false)),
        ("invert_sigmas", Lit::Bool(false)),
        ("shift_terminal", Lit::Null),
        ("stochastic_sampling", Lit::Bool(false)),
        ("time_shift_type", Lit::Str("exponential")),
    ],
};

pub static FLOW_EULER: Descriptor = Descriptor {
    name: "flow-euler",
    a1111: &[],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta],
    options: &[],
    description: "Euler for flow-matching models (SD3 / SD3.5); not for UNet (ε / v) models",
    build: |d, c| boxed(FlowEuler::new(d, c)),
};

/// diffusers' static shift, in the float precision the caller's values carry.
fn shifted(shift: f64, s: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

pub struct FlowEuler {
    state: SamplerState,
    /// The shifted training sigmas' ends (float32 values), which `set_timesteps` spaces between.
    sigma_min: f64,
    sigma_max: f64,
}

impl FlowEuler {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let n = cfg.num_train_timesteps;
        ensure!(n >= 1, "num_train_timesteps must be at least 1");
        ensure!(cfg.shift.is_finite() && cfg.shift > 0.0, "shift must be a finite number > 0 (got {})", cfg.shift);
        // the class's construction-time table, in float32: σ = t / T for t = T … 1, then shifted
        let sh = cfg.shift as f32;
        let train = |t: usize| {
            let s = t as f32 / n as f32;
            (sh * s / (1.0 + (sh - 1.0) * s)) as f64
        };
        let (sigma_max, sigma_min) = (train(n), train(1));
        let state = SamplerState::new(d, cfg, Family::FlowMatch)?;
        Ok(Self { state, sigma_min, sigma_max })
    }
}

impl Scheduler for FlowEuler {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        // diffusers would space more steps than training timesteps; like the other samplers, refuse them
        check_steps(&self.state.cfg, n)?;
        let cfg = &self.state.cfg;
        let t_train = cfg.num_train_timesteps as f64;
        // float64 like diffusers' numpy, rounded to float32 once at the end
        let base: Vec<f64> = np_linspace(self.sigma_max * t_train, self.sigma_min * t_train, n)
            .into_iter()
            .map(|t| shifted(cfg.shift, t / t_train))
            .collect();
        let sig: Vec<f64> =
            ksched::respace(cfg, &base, n).unwrap_or(base).into_iter().map(|s| s as f32 as f64).collect();
        let timesteps = sig.iter().map(|s| (*s as f32 * t_train as f32) as f64).collect();
        let mut sigmas = sig;
        sigmas.push(0.0);
        self.state.set_schedule(timesteps, sigmas);
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
        let (s, next) = (self.state.sigma(i)?, self.state.sigma(i + 1)?);
        let dt = (next as f32 - s as f32) as f64;
        // dt·v in the model output's dtype (a 0-dim float32 factor does not promote it), the sum in float32
        let prev = f32(sample)?.f_add(&model_output.f_mul_scalar(dt)?)?;
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}

/// diffusers' `scale_noise`: x_σ = σ·ε + (1 − σ)·x₀ in the sample's dtype (img2img's forward process).
pub(crate) fn scale_noise(sample: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor> {
    let one_minus = (1.0f32 - sigma as f32) as f64;
    lin2(sigma, noise, one_minus, sample)
}
