//! DDIM (Song et al. 2020, arXiv 2010.02502, eq. 12) — diffusers `DDIMScheduler`. `eta` (not a diffusers config
//! field but a `step` argument there) is read from `SchedulerConfig::eta`; eta > 0 draws one `randn` per step.

use crate::choice::Schedule;
use crate::common::{f32, lin2, step_noise};
use crate::config::TimestepSpacing;
use crate::ddpm_math::{clip_x0, x0_eps};
use crate::descriptor::{Models, boxed, Class, Descriptor, SamplerOption, NO_PRESET};
use crate::schedule::{check_steps, spaced_timesteps_int};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "DDIMScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "clip_sample",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "rescale_betas_zero_snr",
    ],
    defaults: |c| {
        c.clip_sample = true;
        c.timestep_spacing = TimestepSpacing::Leading;
    },
    unsupported: &[],
};

pub static DDIM: Descriptor = Descriptor {
    name: "ddim",
    a1111: &["DDIM"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::SgmUniform],
    options: &[SamplerOption::Eta],
    models: Models::Unet,
    description: "DDIM (deterministic with eta = 0)",
    build: |d, c| boxed(Ddim::new(d, c)),
};

/// Reads no step index (so a begin index changes nothing): the previous timestep follows from the one passed in,
/// t − num_train_timesteps / n, as in diffusers' `DDIMScheduler.step`.
pub struct Ddim {
    state: SamplerState,
    num_inference_steps: usize,
}

impl Ddim {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        Ok(Self { state: SamplerState::new(d, cfg, Family::Ddpm)?, num_inference_steps: 0 })
    }
}

impl Scheduler for Ddim {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let timesteps = spaced_timesteps_int(&self.state.cfg, n)?;
        self.state.set_schedule(timesteps, vec![]);
        self.num_inference_steps = n;
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        ensure!(self.num_inference_steps > 0, "DDIM: call set_timesteps before step");
        let st = &self.state;
        let cfg = &st.cfg;
        let t = st.int_timestep(timestep)?;
        let prev_t = t - (cfg.num_train_timesteps / self.num_inference_steps) as i64;
        let a_t = st.alpha_cumprod(t)?;
        let a_prev = st.alpha_cumprod_prev(prev_t)?;
        let sample = f32(sample)?;
        let out = f32(model_output)?;
        let (x0, eps) = x0_eps(st.pred, &sample, &out, a_t)?;
        let x0 = clip_x0(cfg, x0)?;
        let variance = ((1.0 - a_prev) / (1.0 - a_t)) * (1.0 - a_t / a_prev);
        let std_dev = cfg.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let mut prev = lin2(a_prev.sqrt(), &x0, dir, &eps)?;
        if cfg.eta > 0.0 {
            let noise = step_noise(model_output, gen);
            prev = prev.f_add(&noise.f_mul_scalar(std_dev)?)?;
        }
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn set_custom_timesteps(&mut self, _t: &[f64], _d: Device) -> Result<()> {
        anyhow::bail!("DDIM (diffusers DDIMScheduler) does not accept custom timesteps")
    }
}
