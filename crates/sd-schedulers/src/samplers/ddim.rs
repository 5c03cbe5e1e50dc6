//! DDIM (Song et al. 2020, arXiv 2010.02502, eq. 12) — diffusers `DDIMScheduler`. `eta` (not a diffusers config
//! field but a `step` argument there) is read from `SchedulerConfig::eta`; eta > 0 draws one `randn` per step.

use crate::common::{f32, lin2, step_noise, threshold_sample};
use crate::schedule::{check_steps, spaced_timesteps_int};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// Reads no step index (so a begin index changes nothing): the previous timestep follows from the one passed in,
/// t − num_train_timesteps / n, as in diffusers' `DDIMScheduler.step`.
pub struct Ddim {
    state: SamplerState,
    num_inference_steps: usize,
}

/// x0 and ε from the model output for the alpha-parameterised samplers (DDIM, DDPM, LCM, TCD).
pub fn x0_eps(pred: Prediction, sample: &Tensor, out: &Tensor, alpha_prod_t: f64) -> Result<(Tensor, Tensor)> {
    let (a, b) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    Ok(match pred {
        Prediction::Epsilon => (lin2(1.0 / a, sample, -b / a, out)?, out.shallow_clone()),
        Prediction::Sample => (out.shallow_clone(), lin2(1.0 / b, sample, -a / b, out)?),
        Prediction::VPrediction => (lin2(a, sample, -b, out)?, lin2(a, out, b, sample)?),
    })
}

/// Thresholding or clipping of x0, as the alpha-parameterised diffusers schedulers do.
pub fn clip_x0(cfg: &SchedulerConfig, x0: Tensor) -> Result<Tensor> {
    if cfg.thresholding {
        threshold_sample(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    } else if cfg.clip_sample {
        Ok(x0.f_clamp(-cfg.clip_sample_range, cfg.clip_sample_range)?)
    } else {
        Ok(x0)
    }
}

impl Ddim {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        Ok(Self { state: SamplerState::new(name, cfg, Family::Ddpm)?, num_inference_steps: 0 })
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
