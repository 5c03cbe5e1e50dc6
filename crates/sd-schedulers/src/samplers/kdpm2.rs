//! DPM-Solver-2 in k-diffusion form (`sample_dpm_2` / `sample_dpm_2_ancestral`) — diffusers
//! `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`. Each step after the first is split into a
//! midpoint evaluation (at the geometric mean sigma) and the full step; the ancestral variant draws one `randn`
//! at the end of every full step. Tables are laid out exactly as diffusers' (including its index arithmetic).

use crate::common::{f32, k_denoised, k_scale, noise_index, step_noise, StepIndex};
use crate::ksched::{self, KSchedule};
use crate::samplers::heun::interleave_tail;
use crate::schedule::{check_steps, TrainSchedule};
use crate::sigmas::sigma_to_t;
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Kdpm2 {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    ancestral: bool,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    interpol: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
    idx: StepIndex,
    /// The sample at the start of the pending full step (diffusers' `self.sample`).
    pending: Option<Tensor>,
}

/// Python-style index (−1 is the last element).
fn at(v: &[f64], i: isize) -> f64 {
    if i < 0 {
        v[(v.len() as isize + i) as usize]
    } else {
        v[i as usize]
    }
}

/// torch `lerp(a, b, 0.5)` on float32 (the `weight >= 0.5` branch: `b - (b - a) * 0.5`), then exp.
fn geo_mid(a: f64, b: f64) -> f64 {
    let (la, lb) = ((a as f32).ln(), (b as f32).ln());
    (lb - (lb - la) * 0.5).exp() as f64
}

/// `[x0, x1, x1, …, x_last, x_last, x_last]` — diffusers' `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`.
fn layout(v: &[f64]) -> Vec<f64> {
    let mut out = interleave_tail(v);
    out.push(v[v.len() - 1]);
    out
}

impl Kdpm2 {
    pub fn new(name: &str, cfg: SchedulerConfig, ancestral: bool) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        ensure!(
            pred != Prediction::Sample,
            "DPM2 samplers (KDPM2*DiscreteScheduler) do not support prediction_type \"sample\" (diffusers neither)"
        );
        let train = TrainSchedule::new(&cfg)?;
        Ok(Self {
            name: name.into(),
            cfg,
            pred,
            ancestral,
            train,
            timesteps: vec![],
            sigmas: vec![],
            interpol: vec![],
            up: vec![],
            down: vec![],
            idx: StepIndex::default(),
            pending: None,
        })
    }

    fn install(&mut self, s: KSchedule, karras_round: bool) {
        let sig = &s.sigmas; // n + 1 values, last 0
        let n1 = sig.len();
        let f = |x: f32| x as f64;
        let mut ts = s.timesteps.clone();
        if karras_round {
            ts = ts.into_iter().map(|t| t.round_ties_even()).collect();
        }
        let (raw_interp, up, down): (Vec<f64>, Vec<f64>, Vec<f64>) = if self.ancestral {
            let mut up = vec![0.0; n1];
            let mut down = vec![0.0; n1];
            for k in 0..n1 {
                let s = sig[k] as f32;
                let nx = if k + 1 < n1 { sig[k + 1] as f32 } else { 0.0 };
                let u = (nx * nx * (s * s - nx * nx) / (s * s)).sqrt();
                up[k] = f(u);
                down[k] = f((nx * nx - u * u).sqrt());
            }
            down[n1 - 1] = 0.0;
            // lerp(log s, log down, 0.5)
            let mut ip: Vec<f64> = (0..n1).map(|k| geo_mid(sig[k], down[k])).collect();
            ip[n1 - 1] = 0.0;
            if n1 >= 2 {
                ip[n1 - 2] = 0.0;
            }
            (ip, up, down)
        } else {
            // lerp(log s_k, log s_{k-1}, 0.5) with roll(1): s_{-1} is the last (0)
            let ip = (0..n1).map(|k| geo_mid(sig[k], sig[(k + n1 - 1) % n1])).collect();
            (ip, vec![], vec![])
        };
        let t_ip: Vec<f64> = raw_interp.iter().map(|&x| sigma_to_t(x, &self.train.log_sigmas)).collect();
        let mid: &[f64] = if self.ancestral { &t_ip[..n1 - 2] } else { &t_ip[1..n1 - 1] };
        let mut timesteps = vec![ts[0]];
        for (a, b) in mid.iter().zip(&ts[1..]) {
            timesteps.push(*a);
            timesteps.push(*b);
        }
        self.timesteps = timesteps;
        self.sigmas = layout(sig);
        self.interpol = layout(&raw_interp);
        if self.ancestral {
            self.up = layout(&up);
            self.down = layout(&down);
        }
        self.pending = None;
        self.idx.reset();
    }
}

impl Scheduler for Kdpm2 {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let mut plain = self.cfg.clone();
        plain.interpolation_type = "linear".into();
        let s = ksched::euler_schedule(&plain, &self.train, n, 0.0)?;
        let round = self.cfg.use_karras_sigmas;
        self.install(s, round);
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
    fn init_noise_sigma(&self) -> f64 {
        ksched::init_noise_sigma(&self.cfg, &self.sigmas)
    }
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.idx.get(&self.timesteps, timestep)? as isize;
        let sigma = match (&self.pending, self.ancestral) {
            (None, _) => at(&self.sigmas, i),
            (Some(_), false) => at(&self.interpol, i),
            (Some(_), true) => at(&self.interpol, i - 1),
        };
        k_scale(sample, sigma)
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, gen: &mut TorchGenerator) -> Result<Tensor> {
        let i = self.idx.get(&self.timesteps, timestep)? as isize;
        ensure!((i as usize) + 1 < self.sigmas.len(), "step called after the last timestep");
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let first = self.pending.is_none();
        let prev = if !self.ancestral {
            let (sigma, ip, next) = if first {
                (at(&self.sigmas, i), at(&self.interpol, i + 1), at(&self.sigmas, i + 1))
            } else {
                (at(&self.sigmas, i - 1), at(&self.interpol, i), at(&self.sigmas, i))
            };
            if first {
                let x0 = k_denoised(self.pred, &sample, &out, sigma)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
                let prev = sample.f_add(&d.f_mul_scalar(ip - sigma)?)?;
                self.pending = Some(sample);
                prev
            } else {
                let x0 = k_denoised(self.pred, &sample, &out, ip)?;
                let d = sample.f_sub(&x0)?.f_div_scalar(ip)?;
                let base = self.pending.take().ok_or_else(|| anyhow::anyhow!("internal: no pending sample"))?;
                base.f_add(&d.f_mul_scalar(next - sigma)?)?
            }
        } else if first {
            let (sigma, ip) = (at(&self.sigmas, i), at(&self.interpol, i));
            let x0 = k_denoised(self.pred, &sample, &out, sigma)?;
            let d = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
            let prev = sample.f_add(&d.f_mul_scalar(ip - sigma)?)?;
            self.pending = Some(sample);
            prev
        } else {
            let (sigma, ip, up, down) =
                (at(&self.sigmas, i - 1), at(&self.interpol, i - 1), at(&self.up, i - 1), at(&self.down, i - 1));
            let x0 = k_denoised(self.pred, &sample, &out, ip)?;
            let d = sample.f_sub(&x0)?.f_div_scalar(ip)?;
            let base = self.pending.take().ok_or_else(|| anyhow::anyhow!("internal: no pending sample"))?;
            let prev = base.f_add(&d.f_mul_scalar(down - sigma)?)?;
            let noise = step_noise(model_output, gen);
            prev.f_add(&noise.f_mul_scalar(up)?)?
        };
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = noise_index(&self.idx, &self.timesteps, timestep)?;
        Ok(original.f_add(&noise.f_mul_scalar(self.sigmas[i])?)?)
    }
    fn order(&self) -> usize {
        2
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.idx.begin = Some(begin_index);
    }
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
}
