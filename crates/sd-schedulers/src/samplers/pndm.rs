//! PNDM / PLMS (Liu et al. 2022, arXiv 2202.09778) — diffusers `PNDMScheduler`. With `skip_prk_steps` (the SD
//! default, A1111 "PLMS") only the linear multistep part runs; otherwise 4 Runge–Kutta warm-up rounds come first.
//! Like diffusers, the state is a call counter and the timestep passed in, so img2img simply skips the first entries.

use crate::common::{f32, lin, lin2};
use crate::samplers::ddim::int_timestep;
use crate::schedule::{check_steps, np_arange, np_linspace, np_round, spacing_error, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

pub struct Pndm {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    final_alpha_cumprod: f64,
    n: usize,
    prk: Vec<f64>,
    timesteps: Vec<f64>,
    ets: Vec<Tensor>,
    counter: usize,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        let pred = cfg.prediction()?;
        ensure!(pred != Prediction::Sample, "PNDM/PLMS supports prediction_type epsilon or v_prediction, not \"sample\"");
        let train = TrainSchedule::new_exact_zero_snr(&cfg)?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { train.alphas_cumprod[0] };
        Ok(Self { name: name.into(), cfg, pred, train, final_alpha_cumprod, n: 0, prk: vec![], timesteps: vec![], ets: vec![], counter: 0, cur_model_output: None, cur_sample: None })
    }

    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, out: &Tensor) -> Result<Tensor> {
        let a_t = self.train.alpha_cumprod(t)?;
        let a_prev = if prev_t >= 0 { self.train.alpha_cumprod(prev_t)? } else { self.final_alpha_cumprod };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let out = match self.pred {
            Prediction::VPrediction => lin2(a_t.sqrt(), out, b_t.sqrt(), sample)?,
            _ => out.shallow_clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        lin2(sample_coeff, sample, -(a_prev - a_t) / denom, &out)
    }

    fn ratio(&self) -> i64 {
        (self.cfg.num_train_timesteps / self.n) as i64
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
        ensure!(self.cfg.skip_prk_steps || self.ets.len() >= 3, "PNDM: PLMS step before the Runge-Kutta warm-up finished");
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
            lin(&[(55.0 / 24.0, &e[k - 1]), (-59.0 / 24.0, &e[k - 2]), (37.0 / 24.0, &e[k - 3]), (-9.0 / 24.0, &e[k - 4])])?
        };
        let prev = self.prev_sample(&sample, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let train = self.cfg.num_train_timesteps;
        let base: Vec<f64> = match self.cfg.timestep_spacing.as_str() {
            "linspace" => np_linspace(0.0, (train - 1) as f64, n).into_iter().map(np_round).collect(),
            "leading" => (0..n).map(|i| np_round((i * (train / n)) as f64) + self.cfg.steps_offset as f64).collect(),
            "trailing" => np_arange(train as f64, 0.0, -(train as f64 / n as f64)).into_iter().rev().map(|t| np_round(t) - 1.0).collect(),
            other => bail!(spacing_error(other)),
        };
        self.n = n;
        let m = base.len();
        if self.cfg.skip_prk_steps {
            self.prk = vec![];
            let mut plms: Vec<f64> = base[..m - 1].to_vec();
            if m >= 2 {
                plms.push(base[m - 2]);
            }
            plms.push(base[m - 1]);
            plms.reverse();
            self.timesteps = plms;
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
            self.timesteps = prk.iter().chain(plms.iter()).cloned().collect();
            self.prk = prk;
        }
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
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
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, _gen: &mut TorchGenerator) -> Result<Tensor> {
        ensure!(self.n > 0, "PNDM: call set_timesteps before step");
        let t = int_timestep(timestep, &self.train)?;
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let prev = if self.counter < self.prk.len() && !self.cfg.skip_prk_steps {
            self.step_prk(&out, t, &sample)?
        } else {
            self.step_plms(&out, t, &sample)?
        };
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let a = self.train.alpha_cumprod(int_timestep(timestep, &self.train)?)?;
        lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
    }
    fn order(&self) -> usize {
        1
    }
    /// diffusers' PNDMScheduler has no begin index: img2img passes the remaining timesteps and the counter starts at 0.
    fn set_begin_index(&mut self, _begin_index: usize) {}
    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }
}
