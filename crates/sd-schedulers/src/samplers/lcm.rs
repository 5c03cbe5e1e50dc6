//! Latent Consistency Model sampling (Luo et al. 2023, arXiv 2310.04378) — diffusers `LCMScheduler` — and
//! Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024, arXiv 2402.19159) —
//! diffusers `TCDScheduler`. Both pick `n` of the distilled model's `original_inference_steps` timesteps and draw one
//! `randn` per step except the last (TCD only when its gamma, `SchedulerConfig::eta`, is > 0).

use crate::choice::Schedule;
use crate::common::{f32, lin, lin2, step_noise};
use crate::config::{BetaSchedule, TimestepSpacing};
use crate::ddpm_math::{clip_x0, x0_eps};
use crate::descriptor::{Models, boxed, Class, Descriptor, SamplerOption, NO_PRESET};
use crate::schedule::check_steps;
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "LCMScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "original_inference_steps",
        "clip_sample",
        "clip_sample_range",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "timestep_spacing",
        "timestep_scaling",
        "rescale_betas_zero_snr",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
        c.beta_schedule = BetaSchedule::ScaledLinear;
        c.timestep_spacing = TimestepSpacing::Leading;
    },
    unsupported: &[],
};

pub static TCD_CLASS: Class = Class {
    name: "TCDScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "original_inference_steps",
        "clip_sample",
        "clip_sample_range",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "timestep_spacing",
        "timestep_scaling",
        "rescale_betas_zero_snr",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
        c.beta_schedule = BetaSchedule::ScaledLinear;
        c.timestep_spacing = TimestepSpacing::Leading;
    },
    unsupported: &[],
};

pub static LCM: Descriptor = Descriptor {
    name: "lcm",
    a1111: &["LCM"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal],
    options: &[],
    models: Models::Unet,
    description: "Latent consistency sampling (LCM-distilled models / LCM-LoRA, 2-8 steps)",
    build: |d, c| boxed(Lcm::new(d, c, false)),
};

pub static TCD: Descriptor = Descriptor {
    name: "tcd",
    a1111: &["TCD"],
    class: &TCD_CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal],
    options: &[SamplerOption::Eta],
    models: Models::Unet,
    description: "Trajectory consistency sampling (TCD models; gamma via eta, default 0)",
    build: |d, c| boxed(Lcm::new(d, c, true)),
};

pub struct Lcm {
    state: SamplerState,
    tcd: bool,
}

impl Lcm {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig, tcd: bool) -> Result<Self> {
        let state = SamplerState::new(d, cfg, Family::Ddpm)?;
        if tcd {
            ensure!((0.0..=1.0).contains(&state.cfg.eta), "TCD gamma (eta) must be in [0, 1], got {}", state.cfg.eta);
        }
        Ok(Self { state, tcd })
    }
}

impl Scheduler for Lcm {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let cfg = &self.state.cfg;
        check_steps(cfg, n)?;
        let orig = cfg.original_inference_steps;
        let train = cfg.num_train_timesteps;
        ensure!(orig >= 1 && orig <= train, "original_inference_steps ({orig}) must be in 1..={train}");
        let k = train / orig;
        let origin: Vec<i64> = (1..=orig as i64).map(|i| i * k as i64 - 1).rev().collect();
        ensure!(
            origin.len() / n >= 1,
            "{n} steps is more than the {} timesteps this consistency model was distilled with (original_inference_steps)",
            origin.len()
        );
        let idx = crate::schedule::np_linspace(0.0, origin.len() as f64, n + 1);
        let timesteps = idx[..n].iter().map(|x| origin[x.floor() as usize] as f64).collect();
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
        let last = i + 1 == st.timesteps.len();
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let a_t = st.alpha_cumprod(t)?;
        let prev = if !self.tcd {
            let prev_t = if !last { st.timesteps[i + 1] as i64 } else { t };
            let a_prev = st.alpha_cumprod_prev(prev_t)?;
            let scaled = t as f64 * st.cfg.timestep_scaling;
            let sd2 = 0.25; // sigma_data 0.5
            let c_skip = sd2 / (scaled * scaled + sd2);
            let c_out = scaled / (scaled * scaled + sd2).sqrt();
            let (x0, _) = x0_eps(st.pred, &sample, &out, a_t)?;
            let x0 = clip_x0(&st.cfg, x0)?;
            let denoised = lin2(c_out, &x0, c_skip, &sample)?;
            if !last {
                let noise = step_noise(model_output, gen);
                lin2(a_prev.sqrt(), &denoised, (1.0 - a_prev).sqrt(), &noise)?
            } else {
                denoised
            }
        } else {
            let eta = st.cfg.eta;
            let prev_t = if !last { st.timesteps[i + 1] as i64 } else { 0 };
            let s_t = ((1.0 - eta) * prev_t as f64).floor() as i64;
            let a_prev = st.alpha_cumprod_prev(prev_t)?;
            let a_s = st.alpha_cumprod(s_t)?;
            let (x0, eps) = x0_eps(st.pred, &sample, &out, a_t)?;
            let noised = lin(&[(a_s.sqrt(), &x0), ((1.0 - a_s).sqrt(), &eps)])?;
            if eta > 0.0 && !last {
                let noise = step_noise(model_output, gen);
                lin2((a_prev / a_s).sqrt(), &noised, (1.0 - a_prev / a_s).sqrt(), &noise)?
            } else {
                noised
            }
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
