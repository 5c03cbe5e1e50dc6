//! sd-schedulers: every Stable Diffusion sampler behind one trait, step-exact with diffusers 0.42.1 (and with
//! k-diffusion for the samplers diffusers lacks).
//!
//! | module | what |
//! |---|---|
//! | `samplers/*.rs` | one file per sampler family: its step math next to its `Class` and `Descriptor`s |
//! | `samplers/mod.rs` | `SAMPLERS`, the table: one line per sampler file |
//! | `registry` | lookups in the table, `build` (choice + model config + options → sampler), `list`, `check_models` |
//! | `descriptor` | what a sampler file declares: `Class` (keys, defaults), `Descriptor` (names, schedules, `Models`) |
//! | `choice` | `SamplerChoice` / `Schedule` / `SamplerOptions`: the typed request, parsed from A1111 or short names |
//! | `config` | `SchedulerConfig`, the typed config (enums for every string choice) |
//! | `from_config` | diffusers' `from_config` on the typed config (saved values, class defaults, hidden keys) |
//! | `state` | what every sampler holds, and the trait bodies a sampler family shares |
//! | `schedule` | betas → ᾱ, timestep spacing |
//! | `sigmas` | Karras / exponential / beta sigmas, sigma → t, AYS constants |
//! | `ksched`, `dpm_sched` | the sigma schedules of the k-diffusion-style and DPM-Solver-style classes |
//! | `flow_sched` | the rectified-flow (SD3) sigma schedules (static and dynamic shifts, `calculate_shift`, `EulerTable`) |
//! | `kdiff`, `dpm_math`, `ddpm_math`, `multistep` | step math several samplers share |
//! | `brownian` | torchsde's Brownian tree (the Brownian-noise samplers) |
//! | `custom` | Align Your Steps over any sampler that takes custom sigmas or timesteps |
//! | `split` | one schedule split between two models (diffusers' `denoising_end` / `denoising_start`) |
//! | `common` | step index, float32 upcasting, step noise, thresholding |
//! | `training` | batched forward noising and v targets for training |
//!
//! Adding a sampler: one file in `samplers/` declaring its descriptor, one line in the table of `samplers/mod.rs`,
//! a fixture (CONTRIBUTING.md, "Add a sampler"); `tests/it/contract.rs` then checks it with every other sampler.

pub mod brownian;
pub mod choice;
pub mod common;
pub mod config;
pub mod custom;
pub mod ddpm_math;
pub mod descriptor;
pub mod dpm_math;
pub mod dpm_sched;
pub mod flow_sched;
pub mod from_config;
pub mod kdiff;
pub mod ksched;
pub mod multistep;
pub mod registry;
pub mod samplers;
pub mod schedule;
pub mod sigmas;
pub mod split;
pub mod state;
pub mod training;

pub use choice::{Sampler, SamplerChoice, SamplerOptions, Schedule};
pub use config::{
    AlgorithmType, BetaSchedule, FinalSigmas, Interpolation, Prediction, SchedulerConfig, SigmaSchedule, SolverType,
    TimestepSpacing, TimestepType, VarianceType,
};
pub use descriptor::{Class, Descriptor, Models, SamplerOption};
pub use registry::{check_models, list, lookup, SamplerInfo, SAMPLERS};
pub use state::{Family, SamplerState};
pub use training::{add_noise_batch, get_velocity};

use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// One denoising sampler. The pipeline calls `set_timesteps`, then for each `t` in `timesteps()`:
/// `scale_model_input` → model → `step`. State (step index, multistep history) lives inside the sampler.
///
/// A sampler implements `state`/`state_mut`, `set_timesteps` and `step`; the other methods default to its sampler
/// family's behaviour (see `state.rs`) and are overridden only where a class differs (e.g. second-order samplers'
/// `order`, or `scale_model_input` at a midpoint sigma).
pub trait Scheduler: Send {
    /// The name, config, schedule tables and step index the default methods below read.
    fn state(&self) -> &SamplerState;
    fn state_mut(&mut self) -> &mut SamplerState;
    fn set_timesteps(&mut self, num_inference_steps: usize, device: Device) -> Result<()>;
    /// One denoising step; returns the previous (less noisy) sample.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor>;

    /// Registry name, e.g. "euler-a".
    fn name(&self) -> &str {
        self.state().descriptor.name
    }
    /// The sampler this is (names, class, schedules, options).
    fn descriptor(&self) -> &'static Descriptor {
        self.state().descriptor
    }
    /// The schedule it runs: the one requested, else the one the model's config flags select (`None`: the class's
    /// own spacing).
    fn schedule(&self) -> Option<Schedule> {
        self.state().schedule
    }
    /// What `build` noticed and let pass: config keys no sampler reads, an `eta` this sampler does not take.
    fn warnings(&self) -> &[String] {
        &self.state().warnings
    }
    /// The config as diffusers would save it (`scheduler_config.json` of this sampler's class); building any
    /// sampler from it is diffusers' `from_config` on `scheduler.config`.
    fn saved_config(&self) -> serde_json::Value {
        self.config().to_json(self.descriptor().class.keys)
    }
    /// The loop the pipeline runs, as diffusers' `scheduler.timesteps` (2nd-order samplers repeat entries).
    fn timesteps(&self) -> &[f64] {
        &self.state().timesteps
    }
    /// The sigma schedule (with the final sigma) for sigma-based samplers; empty for the others.
    fn sigmas(&self) -> &[f64] {
        &self.state().sigmas
    }
    fn init_noise_sigma(&self) -> f64 {
        self.state().init_noise_sigma()
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.state_mut().scale_model_input(sample, timestep)
    }
    /// Forward diffusion q(x_t | x_0) at one of this sampler's timesteps.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        self.state().add_noise(original, noise, timestep)
    }
    /// Model evaluations per step (diffusers' `scheduler.order`): 2 for the samplers that repeat timesteps.
    fn order(&self) -> usize {
        1
    }
    /// Start index for img2img (diffusers' `set_begin_index`).
    fn set_begin_index(&mut self, begin_index: usize) {
        self.state_mut().idx.begin = Some(begin_index);
    }
    fn config(&self) -> &SchedulerConfig {
        &self.state().cfg
    }
    /// diffusers' `set_timesteps(mu=...)`: the resolution-dependent shift for the next `set_timesteps`, taken by the
    /// flow-matching samplers whose config sets `use_dynamic_shifting` (the pipeline computes it with
    /// `flow_sched::calculate_shift`).
    fn set_mu(&mut self, _mu: f64) -> Result<()> {
        bail!("sampler {} has no dynamic shifting (use_dynamic_shifting)", self.name())
    }
    /// diffusers' `set_timesteps(timesteps=[...])`, where the class supports it.
    fn set_custom_timesteps(&mut self, _timesteps: &[f64], _device: Device) -> Result<()> {
        bail!("sampler {} does not accept a custom timestep list", self.name())
    }
    /// diffusers' `set_timesteps(sigmas=[...])` (including the final sigma), where the class supports it.
    fn set_custom_sigmas(&mut self, _sigmas: &[f64], _device: Device) -> Result<()> {
        bail!("sampler {} does not accept a custom sigma list", self.name())
    }
    /// Whether custom timesteps are accepted.
    fn accepts_custom_timesteps(&self) -> bool {
        false
    }
    /// Whether custom sigmas are accepted (AYS uses sigmas when possible, timesteps otherwise).
    fn accepts_custom_sigmas(&self) -> bool {
        false
    }
}

/// img2img start, as diffusers' `StableDiffusionImg2ImgPipeline.get_timesteps`: sets `num_steps` timesteps, skips the
/// first `(1 - strength)` part, sets the begin index and returns it. The pipeline then runs
/// `timesteps()[start..]` and noises the init latents with `add_noise(.., timesteps()[start])`.
pub fn img2img_timesteps(sched: &mut dyn Scheduler, num_steps: usize, strength: f64) -> Result<usize> {
    ensure!(strength > 0.0 && strength <= 1.0, "strength must be in (0, 1], got {strength}");
    sched.set_timesteps(num_steps, Device::Cpu)?;
    let init_timestep = ((num_steps as f64 * strength) as usize).min(num_steps);
    ensure!(
        init_timestep > 0,
        "strength {strength} with {num_steps} steps leaves no denoising step; raise the strength or the step count"
    );
    let t_start = num_steps - init_timestep;
    let start = t_start * sched.order();
    ensure!(start < sched.timesteps().len(), "img2img start index {start} is past the end of the schedule");
    sched.set_begin_index(start);
    Ok(start)
}
