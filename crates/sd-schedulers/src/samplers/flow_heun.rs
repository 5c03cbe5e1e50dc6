//! Heun for rectified-flow models (SD3 / SD3.5) — diffusers `FlowMatchHeunDiscreteScheduler`.
//!
//! The schedule is flow-euler's static-shift table (`flow_sched::heun_sigmas`) laid out for a second-order method:
//! every sigma after the first is repeated (`[σ₀, σ₁, σ₁, σ₂, σ₂, …, σₙ₋₁, σₙ₋₁, 0]`) and so is every timestep after
//! the first, so the pipeline evaluates the model twice per step but once for the first entry. Even calls are an
//! Euler predictor from σᵢ to σᵢ₊₁ (the derivative and the sample kept); odd calls the corrector at σᵢ₊₁, averaging
//! the two derivatives. The last step (to σ = 0) is a plain Euler step. The velocity is read as the derivative the
//! way diffusers computes it: x₀ = x − σ·v, d = (x − x₀)/σ, in float32. diffusers' optional churn (`s_churn`) is a
//! `step` argument its pipelines never pass; it is left out.

use crate::choice::Schedule;
use crate::common::f32;
use crate::descriptor::{boxed, Class, Descriptor, Models, NO_PRESET};
use crate::flow_sched;
use crate::schedule::check_steps;
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "FlowMatchHeunDiscreteScheduler",
    keys: &["num_train_timesteps", "shift"],
    defaults: |_| {},
    unsupported: &[],
};

pub static FLOW_HEUN: Descriptor = Descriptor {
    name: "flow-heun",
    a1111: &[],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal],
    options: &[],
    models: Models::Flow,
    description: "Heun (second order, two model evaluations per step) for flow-matching models (SD3 / SD3.5)",
    build: |d, c| boxed(FlowHeun::new(d, c)),
};

/// What the predictor leaves for the corrector.
struct Pending {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

pub struct FlowHeun {
    state: SamplerState,
    ends: (f64, f64),
    pending: Option<Pending>,
}

impl FlowHeun {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let ends = flow_sched::train_ends(&cfg, false)?;
        let state = SamplerState::new(d, cfg, Family::FlowMatch)?;
        Ok(Self { state, ends, pending: None })
    }
}

impl Scheduler for FlowHeun {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let sig = flow_sched::heun_sigmas(&self.state.cfg, self.ends, n);
        let t_train = self.state.cfg.num_train_timesteps as f32;
        let ts: Vec<f64> = sig.iter().map(|s| (*s as f32 * t_train) as f64).collect();
        let mut timesteps = vec![ts[0]];
        let mut sigmas = vec![sig[0]];
        for (t, s) in ts.iter().zip(&sig).skip(1) {
            timesteps.extend([*t, *t]);
            sigmas.extend([*s, *s]);
        }
        sigmas.push(0.0);
        self.state.set_schedule(timesteps, sigmas);
        self.pending = None;
        Ok(())
    }
    fn order(&self) -> usize {
        2
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
        let prev = match self.pending.take() {
            None => {
                let (sigma, next) = (self.state.sigma(i)?, self.state.sigma(i + 1)?);
                // x0 = x − v·σ (v·σ in the model's dtype), d = (x − x0)/σ, dt = σ_next − σ: float32 as diffusers
                let denoised = sample.f_sub(&model_output.f_mul_scalar(sigma)?)?;
                let derivative = sample.f_sub(&denoised)?.f_div_scalar(sigma)?;
                let dt = (next as f32 - sigma as f32) as f64;
                let prev = sample.f_add(&derivative.f_mul_scalar(dt)?)?;
                self.pending = Some(Pending { derivative, dt, sample });
                prev
            }
            Some(p) => {
                let next = self.state.sigma(i)?;
                let denoised = sample.f_sub(&model_output.f_mul_scalar(next)?)?;
                let derivative = sample.f_sub(&denoised)?.f_div_scalar(next)?;
                let derivative = p.derivative.f_add(&derivative)?.f_mul_scalar(0.5)?;
                p.sample.f_add(&derivative.f_mul_scalar(p.dt)?)?
            }
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
