//! Euler for rectified-flow models (Stable Diffusion 3 / 3.5) — diffusers `FlowMatchEulerDiscreteScheduler`.
//!
//! A flow-matching model predicts the velocity v = ε − x₀ of the straight path x_σ = (1 − σ)·x₀ + σ·ε, σ ∈ [0, 1];
//! one step moves the sample along it: x ← x + (σ_next − σ)·v. The schedule is σ = t / T (T the training length)
//! bent towards noise by the static `shift` s: σ' = s·σ / (1 + (s − 1)·σ), and the model is shown σ'·T as its
//! timestep. With `use_dynamic_shifting` the shift depends on the image size instead: the pipeline passes diffusers'
//! `mu` (`Scheduler::set_mu`) and the sigmas go through the exponential time shift (`flow_sched`). Inverted sigmas,
//! a terminal stretch, stochastic steps and the linear time shift are options of the class SD3 does not use; a
//! config setting them is refused (`unsupported`).

use crate::choice::Schedule;
use crate::common::{f32, lin2};
use crate::descriptor::{boxed, Class, Descriptor, Lit, Models, NO_PRESET};
use crate::flow_sched::EulerTable;
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::Result;
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "FlowMatchEulerDiscreteScheduler",
    keys: &KEYS,
    defaults: |_| {},
    unsupported: &UNSUPPORTED,
};

/// The `FlowMatchEulerDiscreteScheduler` arguments sd-rs implements (shared with the samplers run over its schedule).
pub const KEYS: [&str; 10] = [
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
];

/// Its arguments sd-rs refuses unless they keep diffusers' default.
pub const UNSUPPORTED: [(&str, Lit); 4] = [
    ("time_shift_type", Lit::Str("exponential")),
    ("invert_sigmas", Lit::Bool(false)),
    ("shift_terminal", Lit::Null),
    ("stochastic_sampling", Lit::Bool(false)),
];

pub static FLOW_EULER: Descriptor = Descriptor {
    name: "flow-euler",
    a1111: &[],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta],
    options: &[],
    models: Models::Flow,
    description: "Euler for flow-matching models (SD3 / SD3.5)",
    build: |d, c| boxed(FlowEuler::new(d, c)),
};

pub struct FlowEuler {
    state: SamplerState,
    table: EulerTable,
}

impl FlowEuler {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let table = EulerTable::new(&cfg)?;
        let state = SamplerState::new(d, cfg, Family::FlowMatch)?;
        Ok(Self { state, table })
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
