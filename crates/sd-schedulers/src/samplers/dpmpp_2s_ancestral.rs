//! DPM-Solver++(2S) ancestral (A1111 "DPM++ 2S a") — k-diffusion `sample_dpmpp_2s_ancestral` (eta = 1,
//! s_noise = 1). diffusers has no class for it, so it runs over the Euler-family sigma schedule
//! (`EulerDiscreteScheduler`'s sigmas and timesteps, with its Karras / exponential / beta options) like the other
//! k-diffusion ports here.
//!
//! Every step but the last takes two model evaluations: at σᵢ, then at the log-midpoint between σᵢ and the
//! ancestral σ_down; the timestep list repeats accordingly (`[t₀, t₀′, t₁, t₁′, …, t_last]`, where tᵢ′ is the
//! midpoint sigma's timestep). The last step (σ_next = 0) is one Euler step. Noise: one `randn` of the sample's shape
//! from the sampling generator at the end of every step whose σ_next > 0 (k-diffusion's `noise_sampler` call order).
//! `init_noise_sigma` is σ_max, as k-diffusion (and A1111) scale the initial noise.
//! The scalar sigma arithmetic is float32 with LibTorch's log/exp, as k-diffusion computes on 0-d tensors.

use crate::choice::Schedule;
use crate::common::{f32, noise_index, step_noise};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::kdiff::{denoised32, sigma_fn, t_expm1, t_fn};
use crate::ksched;
use crate::schedule::{check_steps, TrainSchedule};
use crate::sigmas::sigma_to_t;
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Context, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// One k-diffusion step's float32 constants.
#[derive(Debug, Clone, Copy)]
struct StepPlan {
    sigma: f32,
    next: f32,
    up: f32,
    down: f32,
    /// The midpoint sigma (valid when `down > 0`).
    mid: f32,
}

/// `get_ancestral_step(σ, σ_next, eta=1)` and the 2S midpoint, in float32.
fn plan(sigma: f32, next: f32) -> StepPlan {
    let (f2, t2) = (sigma * sigma, next * next);
    let up_raw = (t2 * (f2 - t2) / f2).sqrt();
    let up = if up_raw < next { up_raw } else { next };
    let down = (t2 - up * up).sqrt();
    let mid = if down == 0.0 {
        0.0
    } else {
        let (t, tn) = (t_fn(sigma), t_fn(down));
        sigma_fn(t + 0.5 * (tn - t))
    };
    StepPlan { sigma, next, up, down, mid }
}

/// No diffusers class: k-diffusion's sampler over `EulerDiscreteScheduler`'s sigma options.
pub static CLASS: Class = Class {
    name: "k-diffusion sample_dpmpp_2s_ancestral",
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
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
    ],
    defaults: |_| {},
    unsupported: &[],
};

pub static DPMPP_2S_A: Descriptor = Descriptor {
    name: "dpmpp-2s-a",
    a1111: &["DPM++ 2S a"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "DPM++ 2S ancestral (k-diffusion; two model calls per step, fresh noise every step)",
    build: |d, c| boxed(Dpmpp2sAncestral::new(d, c)),
};

/// The state's sigmas are the k-diffusion sigmas (n + 1 values, last 0), one per step rather than per timestep.
pub struct Dpmpp2sAncestral {
    state: SamplerState,
    train: TrainSchedule,
    /// For each entry of the state's timesteps: (step, is the midpoint evaluation).
    slots: Vec<(usize, bool)>,
    plans: Vec<StepPlan>,
    /// The sample at σᵢ while the midpoint evaluation is pending.
    pending: Option<Tensor>,
}

impl Dpmpp2sAncestral {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        ensure!(
            state.pred != Prediction::Sample,
            "DPM++ 2S a supports prediction_type \"epsilon\" and \"v_prediction\""
        );
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train, slots: vec![], plans: vec![], pending: None })
    }

    fn slot(&mut self, timestep: f64) -> Result<(usize, (usize, bool))> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)?;
        let s = *self.slots.get(i).context("step called after the last timestep")?;
        Ok((i, s))
    }
}

impl Scheduler for Dpmpp2sAncestral {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let k = ksched::linear_schedule(&self.state.cfg, &self.train, n)?;
        self.plans = (0..n).map(|i| plan(k.sigmas[i] as f32, k.sigmas[i + 1] as f32)).collect();
        let mut timesteps = vec![];
        self.slots.clear();
        for (i, p) in self.plans.iter().enumerate() {
            timesteps.push(k.timesteps[i]);
            self.slots.push((i, false));
            if p.down != 0.0 {
                timesteps.push(sigma_to_t(p.mid as f64, &self.train.log_sigmas) as f32 as f64);
                self.slots.push((i, true));
            }
        }
        self.state.set_schedule(timesteps, k.sigmas);
        self.pending = None;
        Ok(())
    }
    /// σ_max, as k-diffusion (and A1111) scale the initial noise, whatever the timestep spacing.
    fn init_noise_sigma(&self) -> f64 {
        self.state.sigmas.first().copied().unwrap_or(1.0)
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let (_, (step, mid)) = self.slot(timestep)?;
        let p = self.plans[step];
        let s = if mid { p.mid } else { p.sigma };
        Ok(sample.f_div_scalar((s * s + 1.0).sqrt() as f64)?)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let (_, (step, mid)) = self.slot(timestep)?;
        let p = self.plans[step];
        let out = f32(model_output)?;
        let x = f32(sample)?;
        let t = t_fn(p.sigma);
        let prev = if !mid {
            let denoised = denoised32(self.state.pred, &x, &out, p.sigma)?;
            if p.down == 0.0 {
                let d = x.f_sub(&denoised)?.f_div_scalar(p.sigma as f64)?;
                x.f_add(&d.f_mul_scalar((p.down - p.sigma) as f64)?)?
            } else {
                let h = t_fn(p.down) - t;
                let c1 = sigma_fn(t + 0.5 * h) / sigma_fn(t);
                let x2 = x.f_mul_scalar(c1 as f64)?.f_sub(&denoised.f_mul_scalar(t_expm1(-h * 0.5) as f64)?)?;
                self.pending = Some(x);
                x2
            }
        } else {
            let base = self.pending.take().context("internal: midpoint evaluation without a pending step")?;
            let denoised = denoised32(self.state.pred, &x, &out, p.mid)?;
            let t_next = t_fn(p.down);
            let h = t_next - t;
            let c1 = sigma_fn(t_next) / sigma_fn(t);
            base.f_mul_scalar(c1 as f64)?.f_sub(&denoised.f_mul_scalar(t_expm1(-h) as f64)?)?
        };
        // the step is complete after the Euler step or the midpoint evaluation
        let prev = if (mid || p.down == 0.0) && p.next > 0.0 {
            prev.f_add(&step_noise(&prev, gen).f_mul_scalar(p.up as f64)?)?
        } else {
            prev
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    /// At the timestep's own sigma (the midpoint one for a midpoint entry), not the per-step sigma table.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = noise_index(&self.state.idx, &self.state.timesteps, timestep)?;
        let (step, mid) = self.slots[i.min(self.slots.len().saturating_sub(1))];
        let p = self.plans[step];
        let s = if mid { p.mid } else { p.sigma };
        Ok(original.f_add(&noise.f_mul_scalar(s as f64)?)?)
    }
    fn order(&self) -> usize {
        2
    }
}
