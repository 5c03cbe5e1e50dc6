//! Latent Consistency Model sampling (Luo et al. 2023, arXiv 2310.04378) — diffusers `LCMScheduler` — and
//! Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024, arXiv 2402.19159) —
//! diffusers `TCDScheduler`. Both pick `n` of the distilled model's `original_inference_steps` timesteps and draw one
//! `randn` per step except the last (TCD only when its gamma, `SchedulerConfig::eta`, is > 0).

use crate::common::{f32, lin, lin2, step_noise, StepIndex};
use crate::samplers::ddim::{clip_x0, int_timestep, x0_eps};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Lcm {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    tcd: bool,
    train: TrainSchedule,
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
    n: usize,
    idx: StepIndex,
}

impl Lcm {
    pub fn new(name: &str, cfg: SchedulerConfig, tcd: bool) -> Result<Self> {
        let pred = cfg.prediction()?;
        if tcd {
            ensure!((0.0..=1.0).contains(&cfg.eta), "TCD gamma (eta) must be in [0, 1], got {}", cfg.eta);
        }
        let train = TrainSchedule::new_exact_zero_snr(&cfg)?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { train.alphas_cumprod[0] };
        Ok(Self { name: name.into(), cfg, pred, tcd, train, final_alpha_cumprod, timesteps: vec![], n: 0, idx: StepIndex::default() })
    }

    fn a(&self, t: i64) -> Result<f64> {
        if t >= 0 {
            self.train.alpha_cumprod(t)
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }
}

impl Scheduler for Lcm {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let orig = self.cfg.original_inference_steps;
        let train = self.cfg.num_train_timesteps;
        ensure!(orig >= 1 && orig <= train, "original_inference_steps ({orig}) must be in 1..={train}");
        let k = train / orig;
        let origin: Vec<i64> = (1..=orig as i64).map(|i| i * k as i64 - 1).rev().collect();
        ensure!(
            origin.len() / n >= 1,
            "{n} steps is more than the {} timesteps this consistency model was distilled with (original_inference_steps)",
            origin.len()
        );
        let idx = crate::schedule::np_linspace(0.0, origin.len() as f64, n + 1);
        self.timesteps = idx[..n].iter().map(|x| origin[x.floor() as usize] as f64).collect();
        self.n = n;
        self.idx.reset();
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
        ensure!(self.n > 0, "call set_timesteps before step");
        let i = self.idx.get(&self.timesteps, timestep)?;
        ensure!(i < self.timesteps.len(), "step called after the last timestep");
        let t = int_timestep(self.timesteps[i], &self.train)?;
        let last = i == self.n - 1;
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let a_t = self.train.alpha_cumprod(t)?;
        let prev = if !self.tcd {
            let prev_t = if i + 1 < self.timesteps.len() { self.timesteps[i + 1] as i64 } else { t };
            let a_prev = self.a(prev_t)?;
            let scaled = t as f64 * self.cfg.timestep_scaling;
            let sd2 = 0.25; // sigma_data 0.5
            let c_skip = sd2 / (scaled * scaled + sd2);
            let c_out = scaled / (scaled * scaled + sd2).sqrt();
            let (x0, _) = x0_eps(self.pred, &sample, &out, a_t)?;
            let x0 = clip_x0(&self.cfg, x0)?;
            let denoised = lin2(c_out, &x0, c_skip, &sample)?;
            if !last {
                let noise = step_noise(model_output, gen);
                lin2(a_prev.sqrt(), &denoised, (1.0 - a_prev).sqrt(), &noise)?
            } else {
                denoised
            }
        } else {
            let eta = self.cfg.eta;
            let prev_t = if i + 1 < self.timesteps.len() { self.timesteps[i + 1] as i64 } else { 0 };
            let s_t = ((1.0 - eta) * prev_t as f64).floor() as i64;
            let a_prev = self.a(prev_t)?;
            let a_s = self.train.alpha_cumprod(s_t)?;
            let (x0, eps) = x0_eps(self.pred, &sample, &out, a_t)?;
            let noised = lin(&[(a_s.sqrt(), &x0), ((1.0 - a_s).sqrt(), &eps)])?;
            if eta > 0.0 && !last {
                let noise = step_noise(model_output, gen);
                lin2((a_prev / a_s).sqrt(), &noised, (1.0 - a_prev / a_s).sqrt(), &noise)?
            } else {
                noised
            }
        };
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.train.alpha_cumprod(int_timestep(timestep, &self.train)?)?;
        lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
    }
    fn order(&self) -> usize {
        1
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.idx.begin = Some(begin_index);
    }
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
}
