//! DDIM (Song et al. 2020, arXiv 2010.02502, eq. 12) — diffusers `DDIMScheduler`. `eta` (not a diffusers config
//! field but a `step` argument there) is read from `SchedulerConfig::eta`; eta > 0 draws one `randn` per step.

use crate::common::{f32, lin2, step_noise, threshold_sample};
use crate::schedule::{check_steps, spaced_timesteps_int, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Ddim {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
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

/// Integer training timestep from the f64 the pipeline passes.
pub fn int_timestep(t: f64, train: &TrainSchedule) -> Result<i64> {
    let ti = t.round() as i64;
    ensure!((0..train.alphas_cumprod.len() as i64).contains(&ti), "timestep {t} is outside the training schedule");
    Ok(ti)
}

impl Ddim {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        let pred = cfg.prediction()?;
        let train = TrainSchedule::new_exact_zero_snr(&cfg)?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { train.alphas_cumprod[0] };
        Ok(Self { name: name.into(), cfg, pred, train, final_alpha_cumprod, timesteps: vec![], num_inference_steps: 0 })
    }
}

impl Scheduler for Ddim {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        self.timesteps = spaced_timesteps_int(&self.cfg, n)?;
        self.num_inference_steps = n;
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, gen: &mut TorchGenerator) -> Result<Tensor> {
        ensure!(self.num_inference_steps > 0, "DDIM: call set_timesteps before step");
        let t = int_timestep(timestep, &self.train)?;
        let prev_t = t - (self.cfg.num_train_timesteps / self.num_inference_steps) as i64;
        let a_t = self.train.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 { self.train.alphas_cumprod[prev_t as usize] } else { self.final_alpha_cumprod };
        let sample = f32(sample)?;
        let out = f32(model_output)?;
        let (x0, eps) = x0_eps(self.pred, &sample, &out, a_t)?;
        let x0 = clip_x0(&self.cfg, x0)?;
        let variance = ((1.0 - a_prev) / (1.0 - a_t)) * (1.0 - a_t / a_prev);
        let std_dev = self.cfg.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let mut prev = lin2(a_prev.sqrt(), &x0, dir, &eps)?;
        if self.cfg.eta > 0.0 {
            let noise = step_noise(model_output, gen);
            prev = prev.f_add(&noise.f_mul_scalar(std_dev)?)?;
        }
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.train.alphas_cumprod[int_timestep(timestep, &self.train)? as usize];
        lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
    }
    fn order(&self) -> usize {
        1
    }
    fn set_begin_index(&mut self, _begin_index: usize) {}
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
    fn set_custom_timesteps(&mut self, _t: &[f64], _d: Device) -> Result<()> {
        anyhow::bail!("DDIM (diffusers DDIMScheduler) does not accept custom timesteps")
    }
}
