//! Euler ancestral for rectified-flow models (SD3 / SD3.5) — ComfyUI's `sample_euler_ancestral_RF`
//! (comfy/k_diffusion/sampling.py), which diffusers lacks, run over flow-euler's schedule
//! (`FlowMatchEulerDiscreteScheduler`'s sigmas with its static or dynamic shift and re-spacing options).
//!
//! Each step moves the sample to a lower noise level σ_down than the next σ and then adds fresh noise back to
//! reach σ_next. Variance-exploding ancestral steps (euler-a) cannot be used: the flow process also scales the
//! signal by α = 1 − σ. With r = 1 + (σ_next/σ − 1)·η, σ_down = σ_next·r; the deterministic move interpolates
//! between the sample and x₀ = x − σ·v by σ_down/σ, the result is scaled by α_next/α_down and noise of standard
//! deviation √(σ_next² − σ_down²·α_next²/α_down²) is added, so the marginal is again (1 − σ_next)·x₀ + σ_next·ε.
//! η = 0 is the plain flow Euler step, η = 1 (the default) the full ancestral step. The last step (σ_next = 0)
//! returns x₀. Noise: one `randn` of the sample's shape and dtype from the sampling generator in every step with
//! σ_next > 0 and η > 0 (ComfyUI's `noise_sampler` call order). Scalars are float32, as on ComfyUI's 0-d tensors.

use crate::choice::Schedule;
use crate::common::{f32, step_noise};
use crate::descriptor::{boxed, Class, Descriptor, Models, SamplerOption, NO_PRESET};
use crate::flow_sched::EulerTable;
use crate::samplers::flow_euler::{KEYS, UNSUPPORTED};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// No diffusers class: ComfyUI's sampler over `FlowMatchEulerDiscreteScheduler`'s sigma options.
pub static CLASS: Class = Class {
    name: "k-diffusion sample_euler_ancestral_RF",
    keys: &KEYS,
    defaults: |c| c.eta = 1.0,
    unsupported: &UNSUPPORTED,
};

pub static FLOW_EULER_A: Descriptor = Descriptor {
    name: "flow-euler-a",
    a1111: &[],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta],
    options: &[SamplerOption::Eta],
    models: Models::Flow,
    description: "Euler ancestral for flow-matching models (SD3 / SD3.5; ComfyUI's euler_ancestral_RF), eta 1",
    build: |d, c| boxed(FlowEulerAncestral::new(d, c)),
};

/// One step's float32 constants: (σ_down/σ, α_next/α_down, renoise standard deviation).
fn plan(sigma: f32, next: f32, eta: f32) -> (f32, f32, f32) {
    let ratio = 1.0 + (next / sigma - 1.0) * eta;
    let down = next * ratio;
    let (alpha_next, alpha_down) = (1.0 - next, 1.0 - down);
    let renoise = (next * next - down * down * (alpha_next * alpha_next) / (alpha_down * alpha_down)).sqrt();
    (down / sigma, alpha_next / alpha_down, renoise)
}

pub struct FlowEulerAncestral {
    state: SamplerState,
    table: EulerTable,
}

impl FlowEulerAncestral {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        ensure!(cfg.eta.is_finite() && cfg.eta >= 0.0, "eta must be a finite number ≥ 0 (got {})", cfg.eta);
        let table = EulerTable::new(&cfg)?;
        let state = SamplerState::new(d, cfg, Family::FlowMatch)?;
        Ok(Self { state, table })
    }
}

impl Scheduler for FlowEulerAncestral {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let (timesteps, sigmas) = self.table.schedule(&self.state.cfg, n)?;
        self.state.set_schedule(timesteps, sigmas);
        Ok(())
    }
    fn set_mu(&mut self, mu: f64) -> Result<()> {
        self.table.set_mu(&self.state.cfg, mu)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let (sigma, next) = (self.state.sigma(i)? as f32, self.state.sigma(i + 1)? as f32);
        let eta = self.state.cfg.eta as f32;
        let x = f32(sample)?;
        // ComfyUI's x₀ of a CONST (flow) model: x − v·σ
        let denoised = x.f_sub(&f32(model_output)?.f_mul_scalar(sigma as f64)?)?;
        let prev = if next == 0.0 {
            denoised
        } else {
            let (ratio, scale, renoise) = plan(sigma, next, eta);
            let moved = x.f_mul_scalar(ratio as f64)?.f_add(&denoised.f_mul_scalar((1.0 - ratio) as f64)?)?;
            if eta > 0.0 {
                let noise = f32(&step_noise(sample, gen))?;
                moved.f_mul_scalar(scale as f64)?.f_add(&noise.f_mul_scalar(renoise as f64)?)?
            } else {
                moved
            }
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
