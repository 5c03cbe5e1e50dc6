//! DPM-Solver++ SDE (A1111 "DPM++ SDE") — diffusers `DPMSolverSDEScheduler`: a second-order stochastic step in
//! log-sigma time whose noise comes from a Brownian tree (see `brownian.rs`), so the noise of a step is the
//! Brownian increment between its two sigmas rather than a fresh draw.
//!
//! The tree's seed is the config's `noise_sampler_seed`. diffusers draws it, when unset, from torch's *global*
//! generator (`torch.randint(0, 2**63 - 1, [])`), which the pipeline's generator never touches; here it is drawn the
//! same way but from the sampling generator, once, at the first `step` after `set_timesteps` (so a seeded run is
//! reproducible; it equals diffusers with `noise_sampler_seed` set to that draw). The scalar sigma arithmetic is
//! done in float32 with LibTorch's own log/exp, as diffusers does on 0-d float32 tensors, because the Brownian
//! query times depend on those exact values.

use crate::brownian::BrownianNoise;
use crate::choice::Schedule;
use crate::common::{f32, k_euler};
use crate::config::TimestepSpacing;
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::kdiff::{denoised32, sigma_fn, t_expm1, t_fn};
use crate::ksched::{self, interleave_tail};
use crate::schedule::{check_steps, np_linspace, spaced_timesteps_int, TrainSchedule};
use crate::sigmas::{interp_index, sigma_to_t};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Context, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "DPMSolverSDEScheduler",
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
        "noise_sampler_seed",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.beta_start = 0.00085;
        c.beta_end = 0.012;
    },
    unsupported: &[],
};

pub static DPMPP_SDE: Descriptor = Descriptor {
    name: "dpmpp-sde",
    a1111: &["DPM++ SDE"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "DPM-Solver++ SDE (two model calls per step, Brownian-tree noise seeded once per run)",
    build: |d, c| boxed(DpmSde::new(d, c)),
};

/// The state's sigmas are float32 values laid out as diffusers' (`[s0, s1, s1, …, s_last, s_last, 0]`).
pub struct DpmSde {
    state: SamplerState,
    train: TrainSchedule,
    /// The sample at the start of the pending second-order step and the midpoint sigma.
    pending: Option<(Tensor, f32)>,
    noise: Option<BrownianNoise>,
}

impl DpmSde {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let state = SamplerState::new(d, cfg, Family::KDiffusion)?;
        ensure!(
            state.pred != Prediction::Sample,
            "DPM++ SDE (DPMSolverSDEScheduler) does not support prediction_type \"sample\" (diffusers neither)"
        );
        let train = TrainSchedule::new(&state.cfg)?;
        Ok(Self { state, train, pending: None, noise: None })
    }
}

impl Scheduler for DpmSde {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let cfg = &self.state.cfg;
        check_steps(cfg, n)?;
        // this class spaces "linspace" timesteps in float64 (not float32 like Euler)
        let mut ts = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => {
                np_linspace(0.0, (cfg.num_train_timesteps - 1) as f64, n).into_iter().rev().collect()
            }
            _ => spaced_timesteps_int(cfg, n)?,
        };
        let mut sig: Vec<f64> = ts.iter().map(|&t| interp_index(t, &self.train.sigmas)).collect();
        if let Some(s) = ksched::respace(cfg, &sig, n) {
            ts = s.iter().map(|&x| sigma_to_t(x, &self.train.log_sigmas)).collect();
            sig = s;
        }
        // second-order timesteps: the log-sigma midpoints of consecutive (float64) sigmas
        let mids: Vec<f64> = sig
            .windows(2)
            .map(|w| {
                let (a, b) = (-w[0].ln(), -w[1].ln());
                sigma_to_t((-(a + (b - a) * 0.5)).exp(), &self.train.log_sigmas)
            })
            .collect();
        let mut timesteps = vec![ts[0]];
        for (m, t) in mids.iter().zip(&ts[1..]) {
            timesteps.push(*m);
            timesteps.push(*t);
        }
        sig.push(0.0);
        let sig32: Vec<f64> = sig.iter().map(|&s| s as f32 as f64).collect();
        let mut laid = interleave_tail(&sig32[..sig32.len() - 1]);
        laid.push(0.0);
        self.state.set_schedule(timesteps, laid);
        self.pending = None;
        self.noise = None;
        Ok(())
    }
    /// The second evaluation of a step sees the sample scaled for the midpoint sigma, in float32.
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.state.idx.get(&self.state.timesteps, timestep)?;
        let s = match &self.pending {
            None => self.state.sigmas[i] as f32,
            Some((_, mid)) => *mid,
        };
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
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let sig = &self.state.sigmas;
        if self.noise.is_none() {
            let pos: Vec<f32> = sig.iter().filter(|s| **s > 0.0).map(|s| *s as f32).collect();
            let lo = pos.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = sig.iter().map(|s| *s as f32).fold(f32::NEG_INFINITY, f32::max);
            // torch.randint(0, 2**63 - 1, []): one 64-bit draw modulo the range
            let seed = self.state.cfg.noise_sampler_seed.unwrap_or_else(|| gen.next_u64() % ((1u64 << 63) - 1));
            self.noise = Some(BrownianNoise::new(lo, hi, &sample.size(), seed)?);
        }
        let first = self.pending.is_none();
        let (sigma, sigma_next) =
            if first { (sig[i] as f32, sig[i + 1] as f32) } else { (sig[i - 1] as f32, sig[i] as f32) };
        let pred = self.state.pred;
        let t = t_fn(sigma);
        let prev = if sigma_next == 0.0 {
            let x0 = denoised32(pred, &sample, &out, sigma)?;
            k_euler(&sample, &x0, sigma as f64, 0.0)?
        } else {
            let t_next = t_fn(sigma_next);
            let t_prop = t + (t_next - t) * 0.5;
            let x0 = denoised32(pred, &sample, &out, if first { sigma } else { sigma_fn(t_prop) })?;
            let (t_to, base) = match self.pending.take() {
                None => (t_prop, sample),
                Some((s, _)) => (t_next, s),
            };
            let (s_from, s_to) = (sigma_fn(t), sigma_fn(t_to));
            let (f2, t2) = (s_from * s_from, s_to * s_to);
            let up_raw = (t2 * (f2 - t2) / f2).sqrt();
            let up = if up_raw < s_to { up_raw } else { s_to };
            let down = (t2 - up * up).sqrt();
            let t_anc = t_fn(down);
            let c1 = sigma_fn(t_anc) / sigma_fn(t);
            let c2 = t_expm1(t - t_anc);
            let prev = base.f_mul_scalar(c1 as f64)?.f_sub(&x0.f_mul_scalar(c2 as f64)?)?;
            let noise = self.noise.as_mut().context("internal: no noise sampler")?.sample(s_from, s_to)?;
            let prev = prev.f_add(&noise.to_device(prev.device()).f_mul_scalar(up as f64)?)?;
            if first {
                self.pending = Some((base, s_to));
            }
            prev
        };
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn order(&self) -> usize {
        2
    }
}
