//! PNDM / PLMS (Liu et al. 2022, arXiv 2202.09778) — diffusers `PNDMScheduler`. With `skip_prk_steps` (the SD
//! default, A1111 "PLMS") only the linear multistep part runs; otherwise 4 Runge–Kutta warm-up rounds come first.
//! Like diffusers, the state is a call counter and the timestep passed in, so img2img simply skips the first entries.

use crate::choice::Schedule;
use crate::common::{f32, lin, lin2};
use crate::config::TimestepSpacing;
use crate::descriptor::{Models, boxed, Class, Descriptor, NO_PRESET};
use crate::schedule::{check_steps, np_arange, np_linspace, np_round};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub static CLASS: Class = Class {
    name: "PNDMScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "skip_prk_steps",
        "set_alpha_to_one",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.set_alpha_to_one = false;
        c.timestep_spacing = TimestepSpacing::Leading;
    },
    unsupported: &[],
};

pub static PLMS: Descriptor = Descriptor {
    name: "plms",
    a1111: &["PLMS"],
    class: &CLASS,
    preset: |c| c.skip_prk_steps = true,
    schedules: &[Schedule::Normal, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "Pseudo linear multistep (PNDM without Runge-Kutta warm-up)",
    build: |d, c| boxed(Pndm::new(d, c)),
};

pub static PNDM: Descriptor = Descriptor {
    name: "pndm",
    a1111: &[],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "PNDM as the model config says (Runge-Kutta warm-up unless skip_prk_steps)",
    build: |d, c| boxed(Pndm::new(d, c)),
};

/// diffusers' PNDMScheduler has no begin index: img2img passes the remaining timesteps and the counter starts at 0,
/// so the state's step and begin indices go unused.
pub struct Pndm {
    state: SamplerState,
    n: usize,
    prk: Vec<f64>,
    ets: Vec<Tensor>,
    counter: usize,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        let state = SamplerState::new(d, cfg, Family::Ddpm)?;
        ensure!(
            state.pred != Prediction::Sample,
            "PNDM/PLMS supports prediction_type epsilon or v_prediction, not \"sample\""
        );
        Ok(Self { state, n: 0, prk: vec![], ets: vec![], counter: 0, cur_model_output: None, cur_sample: None })
    }

    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, out: &Tensor) -> Result<Tensor> {
        let a_t = self.state.alpha_cumprod(t)?;
        let a_prev = self.state.alpha_cumprod_prev(prev_t)?;
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let out = match self.state.pred {
            Prediction::VPrediction => lin2(a_t.sqrt(), out, b_t.sqrt(), sample)?,
            _ => out.shallow_clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        lin2(sample_coeff, sample, -(a_prev - a_t) / denom, &out)
    }

    fn ratio(&self) -> i64 {
        (self.state.cfg.num_train_timesteps / self.n) as i64
    }

    fn step_prk(&mut self, out: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        let diff = if self.counter % 2 == 1 { 0 } else { self.ratio() / 2 };
        let prev_t = t - diff;
        let t = self.prk[self.counter / 4 * 4] as i64;
        let acc = |c: &Option<Tensor>, w: f64| -> Result<Tensor> {
            let add = out.f_mul_scalar(w)?;
            Ok(match c {
                Some(x) => x.f_add(&add)?,
                None => add,
            })
        };
        let mut model_output = out.shallow_clone();
        match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(acc(&self.cur_model_output, 1.0 / 6.0)?);
                self.ets.push(out.shallow_clone());
                self.cur_sample = Some(sample.shallow_clone());
            }
            1 | 2 => self.cur_model_output = Some(acc(&self.cur_model_output, 1.0 / 3.0)?),
            _ => {
                model_output = acc(&self.cur_model_output, 1.0 / 6.0)?;
                self.cur_model_output = None;
            }
        }
        let cur = self.cur_sample.as_ref().unwrap_or(sample).shallow_clone();
        let prev = self.prev_sample(&cur, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(&mut self, out: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        ensure!(
            self.state.cfg.skip_prk_steps || self.ets.len() >= 3,
            "PNDM: PLMS step before the Runge-Kutta warm-up finished"
        );
        let (mut t, mut prev_t) = (t, t - self.ratio());
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(out.shallow_clone());
        } else {
            prev_t = t;
            t += self.ratio();
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample.shallow_clone();
        let model_output = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.shallow_clone());
            out.shallow_clone()
        } else if k == 1 && self.counter == 1 {
            sample = self.cur_sample.take().ok_or_else(|| anyhow::anyhow!("internal: PLMS lost its first sample"))?;
            out.f_add(&e[0])?.f_div_scalar(2.0)?
        } else if k == 2 {
            lin(&[(1.5, &e[1]), (-0.5, &e[0])])?
        } else if k == 3 {
            lin(&[(23.0 / 12.0, &e[2]), (-16.0 / 12.0, &e[1]), (5.0 / 12.0, &e[0])])?
        } else {
            lin(&[
                (55.0 / 24.0, &e[k - 1]),
                (-59.0 / 24.0, &e[k - 2]),
                (37.0 / 24.0, &e[k - 3]),
                (-9.0 / 24.0, &e[k - 4]),
            ])?
        };
        let prev = self.prev_sample(&sample, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let cfg = &self.state.cfg;
        check_steps(cfg, n)?;
        let train = cfg.num_train_timesteps;
        let base: Vec<f64> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n).into_iter().map(np_round).collect(),
            TimestepSpacing::Leading => {
                (0..n).map(|i| np_round((i * (train / n)) as f64) + cfg.steps_offset as f64).collect()
            }
            TimestepSpacing::Trailing => np_arange(train as f64, 0.0, -(train as f64 / n as f64))
                .into_iter()
                .rev()
                .map(|t| np_round(t) - 1.0)
                .collect(),
        };
        let m = base.len();
        let timesteps = if cfg.skip_prk_steps {
            self.prk = vec![];
            let mut plms: Vec<f64> = base[..m - 1].to_vec();
            if m >= 2 {
                plms.push(base[m - 2]);
            }
            plms.push(base[m - 1]);
            plms.reverse();
            plms
        } else {
            ensure!(n >= 4, "PNDM with Runge-Kutta warm-up (skip_prk_steps = false) needs at least 4 steps, got {n}");
            let half = (train / n / 2) as f64;
            let mut prk = vec![];
            for t in &base[m - 4..] {
                prk.push(*t);
                prk.push(*t + half);
            }
            // prk[:-1].repeat(2)[1:-1][::-1]
            let mut rep = vec![];
            for t in &prk[..prk.len() - 1] {
                rep.push(*t);
                rep.push(*t);
            }
            let mut prk: Vec<f64> = rep[1..rep.len() - 1].to_vec();
            prk.reverse();
            let mut plms: Vec<f64> = base[..m - 3].to_vec();
            plms.reverse();
            let timesteps = prk.iter().chain(plms.iter()).cloned().collect();
            self.prk = prk;
            timesteps
        };
        self.state.set_schedule(timesteps, vec![]);
        self.n = n;
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        ensure!(self.n > 0, "PNDM: call set_timesteps before step");
        let t = self.state.int_timestep(timestep)?;
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let prev = if self.counter < self.prk.len() && !self.state.cfg.skip_prk_steps {
            self.step_prk(&out, t, &sample)?
        } else {
            self.step_plms(&out, t, &sample)?
        };
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
