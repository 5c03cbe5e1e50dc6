//! DPM-Solver-2 in k-diffusion form (`sample_dpm_2` / `sample_dpm_2_ancestral`) — diffusers
//! `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`. Each step after the first is split into a
//! midpoint evaluation (at the geometric mean sigma) and the full step; the ancestral variant draws one `randn`
//! at the end of every full step. Tables are laid out exactly as diffusers' (including its index arithmetic).

use crate::choice::Schedule;
use crate::common::{f32, k_denoised, k_euler, k_scale, step_noise};
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::ksched::{self, interleave_tail, KSchedule};
use crate::schedule::{check_steps, TrainSchedule};
use crate::sigmas::sigma_to_t;
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "KDPM2DiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
    },
    unsupported: &[],
};

pub static ANCESTRAL_CLASS: Class = Class {
    name: "KDPM2AncestralDiscreteScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
    },
    unsupported: &[],
};

pub static DPM2: Descriptor = Descriptor {
    name: "dpm2",
    a1111: &["DPM2"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver-2 (k-diffusion, two model calls per step)",
    build: |d, c| boxed(Kdpm2::new(d, c, false)),
};

pub static DPM2_A: Descriptor = Descriptor {
    name: "dpm2-a",
    a1111: &["DPM2 a"],
    class: &ANCESTRAL_CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver-2 ancestral",
    build: |d, c| boxed(Kdpm2::new(d, c, true)),
};

pub struct Kdpm2 {
    state: SamplerState,
    ancestral: bool,
    train: TrainSchedule,
    interpol: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
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
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig, ancestral: bool) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        ensure!(
            state.pred != Prediction::Sample,
            "DPM2 samplers (KDPM2*DiscreteScheduler) do not support prediction_type \"sample\" (diffusers neither)"
        );
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, ancestral, train, interpol: vec![], up: vec![], down: vec![], pending: None })
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
        self.state.set_schedule(timesteps, layout(sig));
        self.interpol = layout(&raw_interp);
        if self.ancestral {
            self.up = layout(&up);
            self.down = layout(&down);
        }
        self.pending = None;
    }
}

impl Scheduler for Kdpm2 {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = ksched::linear_schedule(&self.state.cfg, &self.train, n)?;
        let round = self.state.cfg.use_karras_sigmas;
        self.install(s, round);
        Ok(())
    }
    /// The midpoint evaluation of a step sees the sample scaled for the interpolated sigma.
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)? as isize;
        let sigma = match (&self.pending, self.ancestral) {
            (None, _) => at(&self.state.sigmas, i),
            (Some(_), false) => at(&self.interpol, i),
            (Some(_), true) => at(&self.interpol, i - 1),
        };
        k_scale(sample, sigma)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)? as isize;
        let sig = &self.state.sigmas;
        ensure!((i as usize) + 1 < sig.len(), "step called after the last timestep");
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let pred = self.state.pred;
        let prev = if self.pending.is_none() {
            // first half: Euler to the interpolated sigma, which the non-ancestral table (rolled by one, as
            // diffusers builds it) holds at i + 1
            let (sigma, ip) = (at(sig, i), at(&self.interpol, if self.ancestral { i } else { i + 1 }));
            let x0 = k_denoised(pred, &sample, &out, sigma)?;
            let prev = k_euler(&sample, &x0, sigma, ip)?;
            self.pending = Some(sample);
            prev
        } else if !self.ancestral {
            let (sigma, ip, next) = (at(sig, i - 1), at(&self.interpol, i), at(sig, i));
            let x0 = k_denoised(pred, &sample, &out, ip)?;
            let d = sample.f_sub(&x0)?.f_div_scalar(ip)?;
            let base = self.pending.take().ok_or_else(|| anyhow::anyhow!("internal: no pending sample"))?;
            base.f_add(&d.f_mul_scalar(next - sigma)?)?
        } else {
            let (sigma, ip, up, down) =
                (at(sig, i - 1), at(&self.interpol, i - 1), at(&self.up, i - 1), at(&self.down, i - 1));
            let x0 = k_denoised(pred, &sample, &out, ip)?;
            let d = sample.f_sub(&x0)?.f_div_scalar(ip)?;
            let base = self.pending.take().ok_or_else(|| anyhow::anyhow!("internal: no pending sample"))?;
            let prev = base.f_add(&d.f_mul_scalar(down - sigma)?)?;
            let noise = step_noise(model_output, gen);
            prev.f_add(&noise.f_mul_scalar(up)?)?
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn order(&self) -> usize {
        2
    }
}
