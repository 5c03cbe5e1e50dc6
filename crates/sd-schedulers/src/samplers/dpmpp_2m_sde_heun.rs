//! DPM-Solver++(2M) SDE with the Heun correction (Lu et al., arXiv 2211.01095; A1111 "DPM++ 2M SDE Heun") —
//! k-diffusion `sample_dpmpp_2m_sde(..., solver_type="heun")`, eta = 1 and s_noise = 1 by default. diffusers has
//! the same update (`DPMSolverMultistepScheduler` with sde-dpmsolver++ and heun) but draws fresh Gaussian noise each
//! step, where k-diffusion and A1111 take the Brownian-tree increment between the step's two sigmas
//! (`brownian.rs`), so nearby step counts give nearby images. This port follows k-diffusion, over
//! `EulerDiscreteScheduler`'s sigmas and timesteps (with its Karras / exponential / beta / AYS options) like the
//! other k-diffusion ports here.
//!
//! One model evaluation per step; the last step (σ_next = 0) returns the denoised sample. The tree spans the sigmas
//! the run actually visits (from the img2img begin index on, as k-diffusion is handed them); its seed is the
//! config's `noise_sampler_seed`, else one `torch.randint(0, 2**63 - 1)` from the sampling generator at the first
//! step (k-diffusion draws it from torch's global generator), and none is drawn with eta = 0. One tree serves the
//! whole batch (A1111 seeds one tree per image). Step coefficients are float32 scalars, as k-diffusion computes
//! them on 0-d tensors.

use crate::brownian::BrownianNoise;
use crate::choice::Schedule;
use crate::common::f32;
use crate::config::SolverType;
use crate::descriptor::{Models, boxed, Class, Descriptor, SamplerOption};
use crate::kdiff::{denoised32, t_exp, t_expm1, t_log};
use crate::ksched::{self, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Context, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// No diffusers class: k-diffusion's sampler over `EulerDiscreteScheduler`'s sigma options.
pub static CLASS: Class = Class {
    name: "k-diffusion sample_dpmpp_2m_sde",
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
        "solver_type",
        "noise_sampler_seed",
    ],
    defaults: |c| c.eta = 1.0,
    unsupported: &[],
};

pub static DPMPP_2M_SDE_HEUN: Descriptor = Descriptor {
    name: "dpmpp-2m-sde-heun",
    a1111: &["DPM++ 2M SDE Heun"],
    class: &CLASS,
    preset: |c| c.solver_type = SolverType::Heun,
    schedules: &Schedule::ALL,
    options: &[SamplerOption::Eta],
    models: Models::Unet,
    description: "DPM-Solver++ 2M SDE, Heun correction (k-diffusion; Brownian-tree noise seeded once per run)",
    build: |d, c| boxed(Dpmpp2mSdeHeun::new(d, c)),
};

/// The state's sigmas are k-diffusion's (n + 1 float32 values, the last 0), one per step.
pub struct Dpmpp2mSdeHeun {
    state: SamplerState,
    train: TrainSchedule,
    heun: bool,
    /// The previous step's denoised sample and log-sigma step h (k-diffusion's `old_denoised`, `h_last`).
    last: Option<(Tensor, f32)>,
    noise: Option<BrownianNoise>,
}

impl Dpmpp2mSdeHeun {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        ensure!(
            state.pred != Prediction::Sample,
            "DPM++ 2M SDE supports prediction_type \"epsilon\" and \"v_prediction\", not \"sample\""
        );
        let heun = match state.cfg.solver_type {
            SolverType::Heun => true,
            SolverType::Midpoint => false,
            other => bail!(
                "DPM++ 2M SDE `solver_type` is {}; expected \"heun\" or \"midpoint\"",
                crate::config::json_name(&other)
            ),
        };
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train, heun, last: None, noise: None })
    }

    fn install(&mut self, k: KSchedule) {
        self.state.set_schedule(k.timesteps, k.sigmas);
        self.last = None;
        self.noise = None;
    }

    /// The Brownian noise over the sigmas from step `i` on, seeded on first use.
    fn noise_from(&mut self, i: usize, shape: &[i64], gen: &mut TorchGenerator) -> Result<&mut BrownianNoise> {
        if self.noise.is_none() {
            let run = &self.state.sigmas[i..];
            let lo = run.iter().filter(|s| **s > 0.0).map(|s| *s as f32).fold(f32::INFINITY, f32::min);
            let hi = run.iter().map(|s| *s as f32).fold(f32::NEG_INFINITY, f32::max);
            // torch.randint(0, 2**63 - 1, []): one 64-bit draw modulo the range
            let seed = self.state.cfg.noise_sampler_seed.unwrap_or_else(|| gen.next_u64() % ((1u64 << 63) - 1));
            self.noise = Some(BrownianNoise::new(lo, hi, shape, seed)?);
        }
        self.noise.as_mut().context("internal: no noise sampler")
    }
}

impl Scheduler for Dpmpp2mSdeHeun {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let k = ksched::linear_schedule(&self.state.cfg, &self.train, n)?;
        self.install(k);
        Ok(())
    }
    /// σ_max, as k-diffusion (and A1111) scale the initial noise, whatever the timestep spacing.
    fn init_noise_sigma(&self) -> f64 {
        self.state.sigmas.first().copied().unwrap_or(1.0)
    }
    /// x / √(σ² + 1) with σ² + 1 in float32, as k-diffusion's model wrapper computes it.
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)?;
        let s = self.state.sigma(i)? as f32;
        Ok(sample.f_div_scalar((s * s + 1.0).sqrt() as f64)?)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let (sigma, next) = (self.state.sigmas[i] as f32, self.state.sigmas[i + 1] as f32);
        let x = f32(sample)?;
        let denoised = denoised32(self.state.pred, &x, &f32(model_output)?, sigma)?;
        let prev = if next == 0.0 {
            denoised.shallow_clone()
        } else {
            let eta = self.state.cfg.eta as f32;
            let (t, s) = (-t_log(sigma), -t_log(next));
            let h = s - t;
            let eta_h = eta * h;
            let decay = next / sigma * t_exp(-eta_h);
            let gain = -t_expm1(-h - eta_h);
            let mut x = x.f_mul_scalar(decay as f64)?.f_add(&denoised.f_mul_scalar(gain as f64)?)?;
            if let Some((old, h_last)) = &self.last {
                let r = h_last / h;
                let c = if self.heun { (gain / (-h - eta_h) + 1.0) * (1.0 / r) } else { 0.5 * gain * (1.0 / r) };
                x = x.f_add(&denoised.f_sub(old)?.f_mul_scalar(c as f64)?)?;
            }
            if eta != 0.0 {
                let z = self.noise_from(i, &x.size(), gen)?.sample(sigma, next)?.f_to_device(x.device())?;
                let amp = (-t_expm1(-2.0 * eta_h)).sqrt();
                x = x.f_add(&z.f_mul_scalar(next as f64)?.f_mul_scalar(amp as f64)?)?;
            }
            self.last = Some((denoised, h));
            x
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn accepts_custom_sigmas(&self) -> bool {
        true
    }
    fn set_custom_sigmas(&mut self, sigmas: &[f64], _device: Device) -> Result<()> {
        let k = ksched::from_sigmas(&self.train, sigmas)?;
        self.install(k);
        Ok(())
    }
}
