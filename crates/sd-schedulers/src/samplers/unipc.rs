//! UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP) plus a corrector (UniC) that reuses
//! the next model evaluation — diffusers `UniPCMultistepScheduler` (bh1 / bh2 variants, data or noise prediction).

use crate::common::{f32, lin, noise_index, threshold_sample, StepIndex};
use crate::dpm_sched::{self, alpha_sigma, lambda, DpmSchedule, Flavor};
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

const FLAVOR: Flavor = Flavor { lambda_clip: false, cfg_minmax: true, final_from_respaced: true, always_round_karras: true };

pub struct UniPc {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    bh1: bool,
    train: TrainSchedule,
    sched: DpmSchedule,
    idx: StepIndex,
    outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    last_sample: Option<Tensor>,
    this_order: usize,
}

/// Solve the small dense system `a x = b` (Gaussian elimination with partial pivoting).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap_or(c);
        ensure!(a[p][c].abs() > 0.0, "UniPC: singular coefficient system (repeated timesteps?)");
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Ok(x)
}

impl UniPc {
    pub fn new(name: &str, mut cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        if !matches!(cfg.solver_type.as_str(), "bh1" | "bh2") {
            // diffusers: other solver types (e.g. "midpoint" from a DPM config) become bh2
            cfg.solver_type = "bh2".into();
        }
        ensure!(cfg.solver_order >= 1, "solver_order must be at least 1");
        // diffusers would return NaN on the last step (0 · ∞); refuse instead
        ensure!(
            cfg.predict_x0 || cfg.final_sigmas_type == "sigma_min",
            "UniPC with predict_x0 = false needs final_sigmas_type \"sigma_min\" (a final sigma of 0 is undefined for noise prediction)"
        );
        let bh1 = cfg.solver_type == "bh1";
        let train = TrainSchedule::new(&cfg)?;
        let outputs = (0..cfg.solver_order).map(|_| None).collect();
        Ok(Self { name: name.into(), cfg, pred, bh1, train, sched: DpmSchedule::default(), idx: StepIndex::default(), outputs, lower_order_nums: 0, last_sample: None, this_order: 0 })
    }

    fn reset(&mut self, s: DpmSchedule) {
        self.sched = s;
        self.outputs = (0..self.cfg.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.idx.reset();
    }

    fn m(&self, back: usize) -> Result<&Tensor> {
        let n = self.outputs.len();
        self.outputs[n - 1 - back].as_ref().ok_or_else(|| anyhow::anyhow!("internal: UniPC history is missing an output"))
    }

    /// (rks without the trailing 1, D1s, h, hh, h_phi_1, B_h, b-vector, R) for an update from s0 to t.
    #[allow(clippy::type_complexity)]
    fn coefficients(&self, s_t: f64, s_s0: f64, others: &[f64], order: usize) -> Result<(Vec<f64>, Vec<Tensor>, f64, Vec<f64>, Vec<Vec<f64>>)> {
        let m0 = self.m(0)?;
        let (l_t, l0) = (lambda(s_t), lambda(s_s0));
        let h = l_t - l0;
        let mut rks = vec![];
        let mut d1s = vec![];
        for (k, &si) in others.iter().enumerate().take(order.saturating_sub(1)) {
            let rk = (lambda(si) - l0) / h;
            rks.push(rk);
            d1s.push(self.m(k + 1)?.f_sub(m0)?.f_div_scalar(rk)?);
        }
        rks.push(1.0);
        let hh = if self.cfg.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut fact = 1.0;
        let b_h = if self.bh1 { hh } else { hh.exp_m1() };
        let mut r = vec![];
        let mut b = vec![];
        for i in 1..=order {
            r.push(rks.iter().map(|x| x.powi(i as i32 - 1)).collect::<Vec<f64>>());
            b.push(h_phi_k * fact / b_h);
            fact *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / fact;
        }
        Ok((vec![hh, h_phi_1, b_h], d1s, h, b, r))
    }

    fn base(&self, x: &Tensor, s_t: f64, s_s0: f64, h_phi_1: f64) -> Result<(Tensor, f64)> {
        let ((a_t, sg_t), (a0, sg0)) = (alpha_sigma(s_t), alpha_sigma(s_s0));
        let m0 = self.m(0)?;
        Ok(if self.cfg.predict_x0 {
            (lin(&[(sg_t / sg0, x), (-a_t * h_phi_1, m0)])?, a_t)
        } else {
            (lin(&[(a_t / a0, x), (-sg_t * h_phi_1, m0)])?, sg_t)
        })
    }

    fn predictor(&self, x: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let s = &self.sched.sigmas;
        let others: Vec<f64> = (1..order).map(|k| s[i - k]).collect();
        let (v, d1s, _h, b, r) = self.coefficients(s[i + 1], s[i], &others, order)?;
        let (h_phi_1, b_h) = (v[1], v[2]);
        let (x_t, scale) = self.base(x, s[i + 1], s[i], h_phi_1)?;
        if d1s.is_empty() {
            return Ok(x_t);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            solve(r[..k].iter().map(|row| row[..k].to_vec()).collect(), b[..k].to_vec())?
        };
        let terms: Vec<(f64, &Tensor)> = rhos.iter().cloned().zip(d1s.iter()).collect();
        let res = lin(&terms)?;
        Ok(x_t.f_sub(&res.f_mul_scalar(scale * b_h)?)?)
    }

    fn corrector(&self, model_t: &Tensor, last: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let s = &self.sched.sigmas;
        let others: Vec<f64> = (1..order).map(|k| s[i - (k + 1)]).collect();
        let (v, d1s, _h, b, r) = self.coefficients(s[i], s[i - 1], &others, order)?;
        let (h_phi_1, b_h) = (v[1], v[2]);
        let (x_t, scale) = self.base(last, s[i], s[i - 1], h_phi_1)?;
        let rhos = if order == 1 { vec![0.5] } else { solve(r, b)? };
        let d1_t = model_t.f_sub(self.m(0)?)?;
        let mut terms: Vec<(f64, &Tensor)> = rhos[..rhos.len() - 1].iter().cloned().zip(d1s.iter()).collect();
        terms.push((rhos[rhos.len() - 1], &d1_t));
        let res = lin(&terms)?;
        Ok(x_t.f_sub(&res.f_mul_scalar(scale * b_h)?)?)
    }

    fn convert(&self, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
        let (a, s) = alpha_sigma(sigma);
        if self.cfg.predict_x0 {
            let x0 = match self.pred {
                Prediction::Epsilon => sample.f_sub(&out.f_mul_scalar(s)?)?.f_div_scalar(a)?,
                Prediction::Sample => out.shallow_clone(),
                Prediction::VPrediction => lin(&[(a, sample), (-s, out)])?,
            };
            if self.cfg.thresholding {
                return threshold_sample(&x0, self.cfg.dynamic_thresholding_ratio, self.cfg.sample_max_value);
            }
            Ok(x0)
        } else {
            Ok(match self.pred {
                Prediction::Epsilon => out.shallow_clone(),
                Prediction::Sample => sample.f_sub(&out.f_mul_scalar(a)?)?.f_div_scalar(s)?,
                Prediction::VPrediction => lin(&[(a, out), (s, sample)])?,
            })
        }
    }
}

impl Scheduler for UniPc {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        let s = dpm_sched::spaced_as(&self.cfg, &self.train, n, FLAVOR)?;
        self.reset(s);
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.sched.timesteps
    }
    fn sigmas(&self) -> &[f64] {
        &self.sched.sigmas
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor, _gen: &mut TorchGenerator) -> Result<Tensor> {
        let len = self.sched.timesteps.len();
        let i = self.idx.for_step(&self.sched.timesteps, timestep, len)?;
        let out = f32(model_output)?;
        let mut sample = f32(sample)?;
        let use_corrector = i > 0 && !self.cfg.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let converted = self.convert(&out, &sample, self.sched.sigmas[i])?;
        if use_corrector {
            let last = self.last_sample.as_ref().map(Tensor::shallow_clone).ok_or_else(|| anyhow::anyhow!("internal"))?;
            sample = self.corrector(&converted, &last, i, self.this_order)?;
        }
        self.outputs.rotate_left(1);
        let n = self.outputs.len();
        self.outputs[n - 1] = Some(converted);
        let order = if self.cfg.lower_order_final { self.cfg.solver_order.min(len - i) } else { self.cfg.solver_order };
        self.this_order = order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.shallow_clone());
        let prev = self.predictor(&sample, i, self.this_order)?;
        if self.lower_order_nums < self.cfg.solver_order {
            self.lower_order_nums += 1;
        }
        self.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = noise_index(&self.idx, &self.sched.timesteps, timestep)?;
        let (a, s) = alpha_sigma(self.sched.sigmas[i]);
        lin(&[(a, original), (s, noise)])
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
