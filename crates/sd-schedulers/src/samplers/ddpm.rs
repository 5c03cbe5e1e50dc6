//! DDPM ancestral sampling (Ho et al. 2020, arXiv 2006.11239, eqs. 6–7) — diffusers `DDPMScheduler`. Draws one
//! `randn` per step while t > 0. The previous timestep is the next entry of the schedule.

use crate::choice::Schedule;
use crate::common::{f32, lin2, step_noise};
use crate::config::{TimestepSpacing, VarianceType};
use crate::ddpm_math::{clip_x0, x0_eps};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::schedule::{check_steps, spaced_timesteps_int};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "DDPMScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "variance_type",
        "clip_sample",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
    ],
    defaults: |c| {
        c.variance_type = Some(VarianceType::FixedSmall);
        c.clip_sample = true;
        c.timestep_spacing = TimestepSpacing::Leading;
    },
    unsupported: &[],
};

pub static DDPM: Descriptor = Descriptor {
    name: "ddpm",
    a1111: &["DDPM"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::SgmUniform, Schedule::Ays, Schedule::AysSdxl],
    options: &[],
    models: Models::Unet,
    description: "DDPM ancestral sampling (needs many steps)",
    build: |d, c| boxed(Ddpm::new(d, c)),
};

pub struct Ddpm {
    state: SamplerState,
}

impl Ddpm {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let state = SamplerState::new(d, cfg, Family::Ddpm)?;
        match state.cfg.variance_type.unwrap_or(VarianceType::FixedSmall) {
            VarianceType::FixedSmall | VarianceType::FixedSmallLog | VarianceType::FixedLarge => {}
            other => bail!(
                "DDPM variance_type {} is not supported (fixed_small, fixed_small_log, fixed_large are)",
                crate::config::json_name(&other)
            ),
        }
        Ok(Self { state })
    }
}

impl Scheduler for Ddpm {
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
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let st = &self.state;
        let t = st.int_timestep(st.timesteps[i])?;
        let prev_t = if i + 1 < st.timesteps.len() { st.timesteps[i + 1] as i64 } else { -1 };
        let a_t = st.alpha_cumprod(t)?;
        // DDPMScheduler has no final_alpha_cumprod: past the last step ᾱ is 1
        let a_prev = if prev_t >= 0 { st.alpha_cumprod(prev_t)? } else { 1.0 };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let sample = f32(sample)?;
        let (x0, _) = x0_eps(st.pred, &sample, &f32(model_output)?, a_t)?;
        let x0 = clip_x0(&st.cfg, x0)?;
        let mut prev = lin2(a_prev.sqrt() * cur_beta / b_t, &x0, cur_alpha.sqrt() * b_prev / b_t, &sample)?;
        if t > 0 {
            let noise = step_noise(model_output, gen);
            let variance = (b_prev / b_t * cur_beta).max(1e-20);
            let std = match st.cfg.variance_type.unwrap_or(VarianceType::FixedSmall) {
                VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
                VarianceType::FixedLarge => cur_beta.sqrt(),
                _ => variance.sqrt(),
            };
            prev = prev.f_add(&noise.f_mul_scalar(std)?)?;
        }
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        ensure!(!timesteps.is_empty(), "a custom timestep list must not be empty");
        ensure!(timesteps.windows(2).all(|w| w[1] < w[0]), "custom timesteps must be in descending order");
        ensure!(
            timesteps[0] < self.state.cfg.num_train_timesteps as f64,
            "custom timesteps must start below num_train_timesteps"
        );
        self.state.set_schedule(timesteps.iter().map(|t| t.trunc()).collect(), vec![]);
        Ok(())
    }
}
