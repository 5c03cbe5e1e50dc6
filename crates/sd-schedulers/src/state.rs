//! What every sampler keeps between calls: its name and config, the tables of the current schedule and the step
//! index. The `Scheduler` methods that read only these (`timesteps`, `sigmas`, `init_noise_sigma`,
//! `scale_model_input`, `add_noise`, `set_begin_index`, `config`, …) are written once here, per sampler family,
//! and reached through `Scheduler::state`, so a sampler file holds just its constructor, its `set_timesteps` and its
//! step math. Those bodies differ only by how a family relates the noisy sample to the clean one (`Family`).

use crate::choice::Schedule;
use crate::common::{k_scale, lin, lin2, noise_index, StepIndex};
use crate::descriptor::Descriptor;
use crate::dpm_sched::alpha_sigma;
use crate::ksched;
use crate::schedule::{alpha_at, TrainSchedule};
use crate::{Prediction, SchedulerConfig};
use anyhow::{anyhow, ensure, Result};
use tch::Tensor;

/// The three ways the supported diffusers classes parameterise the noisy sample x_t, which fix the loop's starting
/// noise (`init_noise_sigma`), what the model is shown (`scale_model_input`) and forward noising (`add_noise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// k-diffusion-style samplers (Euler, Euler a, Heun, LMS, DPM2, DPM++ SDE, DPM++ 2S a, EDM Euler):
    /// x_t = x_0 + σ·ε; the model sees x_t / √(σ² + 1); the loop starts from noise scaled to the largest sigma.
    KDiffusion,
    /// The DPM-Solver family (DPM-Solver multistep and singlestep, DEIS, UniPC): the same sigma table read as a
    /// variance-preserving process, x_t = α·x_0 + ασ·ε with α = 1 / √(σ² + 1); unit noise, unscaled model input.
    DpmSolver,
    /// DDPM-style samplers (DDPM, DDIM, LCM, TCD, PNDM): x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε at the integer training
    /// timestep t; unit noise, unscaled model input.
    Ddpm,
    /// Rectified flow (SD3): x_σ = (1 − σ)·x_0 + σ·ε with σ ∈ [0, 1]; unit noise, unscaled model input, and the model
    /// is shown σ·T as its timestep.
    FlowMatch,
}

/// The schedule a sampler holds. Fields are crate-private so that only this crate's samplers change them; other
/// crates read them through the `Scheduler` methods.
#[derive(Debug)]
pub struct SamplerState {
    /// The sampler this state belongs to.
    pub(crate) descriptor: &'static Descriptor,
    pub(crate) cfg: SchedulerConfig,
    pub(crate) pred: Prediction,
    pub(crate) family: Family,
    /// The loop the pipeline runs (diffusers' `scheduler.timesteps`).
    pub(crate) timesteps: Vec<f64>,
    /// The sigma schedule with its final sigma, laid out as the sampler's diffusers class does (k-diffusion and
    /// DPM-Solver families); empty for the DDPM family.
    pub(crate) sigmas: Vec<f64>,
    /// ᾱ of every training timestep (DDPM family only: the sigma families keep their own `TrainSchedule`, which
    /// they need just for `set_timesteps`).
    pub(crate) alphas_cumprod: Vec<f64>,
    pub(crate) idx: StepIndex,
    /// The schedule `build` set up (see `Scheduler::schedule`).
    pub(crate) schedule: Option<Schedule>,
    /// What `build` let pass (see `Scheduler::warnings`).
    pub(crate) warnings: Vec<String>,
}

impl SamplerState {
    /// An empty schedule for `family`, with the prediction type read from `cfg`. The DDPM family's ᾱ table keeps
    /// ᾱ_T = 0 under zero-SNR rescaling, as DDIM / DDPM / LCM / TCD / PNDM do in diffusers.
    pub fn new(descriptor: &'static Descriptor, cfg: SchedulerConfig, family: Family) -> Result<Self> {
        let pred = cfg.prediction_type;
        // the UNet samplers' math knows ε, v and x₀ only; DPM-Solver reads a velocity over its flow sigmas
        ensure!(
            pred != Prediction::FlowPrediction || (family == Family::FlowMatch && cfg.use_flow_sigmas),
            "prediction_type flow_prediction (a flow-matching model's velocity) needs DPM-Solver with \
             use_flow_sigmas; sampler {} reads ε, v or x₀ predictions",
            descriptor.name
        );
        let alphas_cumprod = match family {
            Family::Ddpm => TrainSchedule::new_exact_zero_snr(&cfg)?.alphas_cumprod,
            Family::KDiffusion | Family::DpmSolver | Family::FlowMatch => vec![],
        };
        Ok(Self {
            descriptor,
            cfg,
            pred,
            family,
            timesteps: vec![],
            sigmas: vec![],
            alphas_cumprod,
            idx: StepIndex::default(),
            schedule: None,
            warnings: vec![],
        })
    }

    /// Install a new schedule (what `set_timesteps` ends with): the step and begin indices start over.
    pub fn set_schedule(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) {
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.idx.reset();
    }

    /// The index for a `step` call (`StepIndex::for_step`): a sigma schedule ends one sigma after its last step,
    /// a DDPM-family one at its last timestep.
    pub fn step_index(&mut self, timestep: f64) -> Result<usize> {
        let steps = match self.family {
            Family::KDiffusion | Family::DpmSolver | Family::FlowMatch => self.sigmas.len().saturating_sub(1),
            Family::Ddpm => self.timesteps.len(),
        };
        self.idx.for_step(&self.timesteps, timestep, steps)
    }

    pub fn init_noise_sigma(&self) -> f64 {
        match self.family {
            Family::KDiffusion => ksched::init_noise_sigma(&self.cfg, &self.sigmas),
            Family::DpmSolver | Family::Ddpm | Family::FlowMatch => 1.0,
        }
    }

    pub fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        match self.family {
            Family::KDiffusion => {
                let i = self.idx.get(&self.timesteps, timestep)?;
                k_scale(sample, self.sigma(i)?)
            }
            Family::DpmSolver | Family::Ddpm | Family::FlowMatch => Ok(sample.shallow_clone()),
        }
    }

    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        match self.family {
            Family::KDiffusion => {
                let i = noise_index(&self.idx, &self.timesteps, timestep)?;
                Ok(original.f_add(&noise.f_mul_scalar(self.sigma(i)?)?)?)
            }
            Family::DpmSolver => {
                let i = noise_index(&self.idx, &self.timesteps, timestep)?;
                let (a, s) = alpha_sigma(self.sigma(i)?);
                lin(&[(a, original), (s, noise)])
            }
            Family::FlowMatch => {
                let i = noise_index(&self.idx, &self.timesteps, timestep)?;
                crate::samplers::flow_euler::scale_noise(original, noise, self.sigma(i)?)
            }
            Family::Ddpm => {
                let a = self.alpha_cumprod(self.int_timestep(timestep)?)?;
                lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
            }
        }
    }

    /// σ at schedule position `i`; an error rather than a panic past the end (a caller's stale index).
    pub fn sigma(&self, i: usize) -> Result<f64> {
        self.sigmas
            .get(i)
            .copied()
            .ok_or_else(|| anyhow!("step {i} is past the end of the {}-sigma schedule", self.sigmas.len()))
    }

    /// The integer training timestep for the f64 the pipeline passes (DDPM family).
    pub fn int_timestep(&self, t: f64) -> Result<i64> {
        let ti = t.round() as i64;
        ensure!((0..self.alphas_cumprod.len() as i64).contains(&ti), "timestep {t} is outside the training schedule");
        Ok(ti)
    }

    /// ᾱ_t for an integer training timestep (DDPM family).
    pub fn alpha_cumprod(&self, t: i64) -> Result<f64> {
        alpha_at(&self.alphas_cumprod, t)
    }

    /// ᾱ at the previous timestep `prev_t`, where a negative one (past the end of the loop) means diffusers'
    /// `final_alpha_cumprod`: 1 with `set_alpha_to_one`, else ᾱ_0 (DDIM, LCM, TCD, PNDM).
    pub fn alpha_cumprod_prev(&self, prev_t: i64) -> Result<f64> {
        if prev_t >= 0 {
            self.alpha_cumprod(prev_t)
        } else if self.cfg.set_alpha_to_one {
            Ok(1.0)
        } else {
            self.alpha_cumprod(0)
        }
    }
}
