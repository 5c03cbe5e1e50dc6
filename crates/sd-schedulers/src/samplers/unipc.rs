//! UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP) plus a corrector (UniC) that reuses
//! the next model evaluation — diffusers `UniPCMultistepScheduler` (bh1 / bh2 variants, data or noise prediction).

use crate::choice::Schedule;
use crate::common::{f32, lin};
use crate::config::{FinalSigmas, SolverType};
use crate::descriptor::{Models, boxed, Class, Descriptor, Lit, NO_PRESET};
use crate::dpm_math::{convert_model_output, predicted_noise};
use crate::dpm_sched::{self, alpha_sigma, lambda, Flavor};
use crate::multistep::ModelOutputs;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

const FLAVOR: Flavor =
    Flavor { lambda_clip: false, cfg_minmax: true, final_from_respaced: true, always_round_karras: true };

pub static CLASS: Class = Class {
    name: "UniPCMultistepScheduler",
    keys: &[
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "solver_order",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "predict_x0",
        "solver_type",
        "lower_order_final",
        "disable_corrector",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "timestep_spacing",
        "steps_offset",
        "final_sigmas_type",
        "rescale_betas_zero_snr",
        "sigma_min",
        "sigma_max",
    ],
    defaults: |c| c.solver_type = SolverType::Bh2,
    unsupported: &[
        ("solver_p", Lit::Null),
        ("use_flow_sigmas", Lit::Bool(false)),
        ("flow_shift", Lit::Num(1.0)),
        ("use_dynamic_shifting", Lit::Bool(false)),
        ("time_shift_type", Lit::Str("exponential")),
        ("shift_terminal", Lit::Null),
    ],
};

pub static UNIPC: Descriptor = Descriptor {
    name: "unipc",
    a1111: &["UniPC"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "UniPC predictor-corrector (bh2)",
    build: |d, c| boxed(UniPc::new(d, c)),
};

pub struct UniPc {
    state: SamplerState,
    bh1: bool,
    train: TrainSchedule,
    outputs: ModelOutputs,
    last_sample: Option<Tensor>,
    this_order: usize,
}

/// Solve the small dense system `a x = b` (Gaussian elimination with partial pivoting).
// Row reduction reads row c while it writes row r of the same matrix, which index loops say most plainly.
#[allow(clippy::needless_range_loop)]
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
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let mut state = SamplerState::new(d, cfg, Family::DpmSolver)?;
        let cfg = &mut state.cfg;
        if !matches!(cfg.solver_type, SolverType::Bh1 | SolverType::Bh2) {
            // diffusers: other solver types (e.g. "midpoint" from a DPM config) become bh2
            cfg.solver_type = SolverType::Bh2;
        }
        ensure!(cfg.solver_order >= 1, "solver_order must be at least 1");
        // diffusers would return NaN on the last step (0 · ∞); refuse instead
        ensure!(
            cfg.predict_x0 || cfg.final_sigmas_type == FinalSigmas::SigmaMin,
            "UniPC with predict_x0 = false needs final_sigmas_type \"sigma_min\" (a final sigma of 0 is undefined for noise prediction)"
        );
        let bh1 = cfg.solver_type == SolverType::Bh1;
        let train = TrainSchedule::new(cfg)?;
        let outputs = ModelOutputs::new(cfg.solver_order);
        Ok(Self { state, bh1, train, outputs, last_sample: None, this_order: 0 })
    }

    /// (rks without the trailing 1, D1s, h, hh, h_phi_1, B_h, b-vector, R) for an update from s0 to t.
    #[allow(clippy::type_complexity)]
    fn coefficients(
        &self,
        s_t: f64,
        s_s0: f64,
        others: &[f64],
        order: usize,
    ) -> Result<(Vec<f64>, Vec<Tensor>, f64, Vec<f64>, Vec<Vec<f64>>)> {
        let m0 = self.outputs.get(0)?;
        let (l_t, l0) = (lambda(s_t), lambda(s_s0));
        let h = l_t - l0;
        let mut rks = vec![];
        let mut d1s = vec![];
        for (k, &si) in others.iter().enumerate().take(order.saturating_sub(1)) {
            let rk = (lambda(si) - l0) / h;
            rks.push(rk);
            d1s.push(self.outputs.get(k + 1)?.f_sub(m0)?.f_div_scalar(rk)?);
        }
        rks.push(1.0);
        let hh = if self.state.cfg.predict_x0 { -h } else { h };
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
        let m0 = self.outputs.get(0)?;
        Ok(if self.state.cfg.predict_x0 {
            (lin(&[(sg_t / sg0, x), (-a_t * h_phi_1, m0)])?, a_t)
        } else {
            (lin(&[(a_t / a0, x), (-sg_t * h_phi_1, m0)])?, sg_t)
        })
    }

    fn predictor(&self, x: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let s = &self.state.sigmas;
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
        let s = &self.state.sigmas;
        let others: Vec<f64> = (1..order).map(|k| s[i - (k + 1)]).collect();
        let (v, d1s, _h, b, r) = self.coefficients(s[i], s[i - 1], &others, order)?;
        let (h_phi_1, b_h) = (v[1], v[2]);
        let (x_t, scale) = self.base(last, s[i], s[i - 1], h_phi_1)?;
        let rhos = if order == 1 { vec![0.5] } else { solve(r, b)? };
        let d1_t = model_t.f_sub(self.outputs.get(0)?)?;
        let mut terms: Vec<(f64, &Tensor)> = rhos[..rhos.len() - 1].iter().cloned().zip(d1s.iter()).collect();
        terms.push((rhos[rhos.len() - 1], &d1_t));
        let res = lin(&terms)?;
        Ok(x_t.f_sub(&res.f_mul_scalar(scale * b_h)?)?)
    }

    /// x0 (thresholded like DPM-Solver++) with `predict_x0`, else ε — which UniPC, unlike DPM-Solver, never thresholds.
    fn convert(&self, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
        let (cfg, pred) = (&self.state.cfg, self.state.pred);
        if cfg.predict_x0 {
            convert_model_output(cfg, pred, true, out, sample, sigma)
        } else {
            predicted_noise(pred, out, sample, sigma)
        }
    }
}

impl Scheduler for UniPc {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = dpm_sched::spaced_as(&self.state.cfg, &self.train, n, FLAVOR)?;
        self.state.set_schedule(s.timesteps, s.sigmas);
        self.outputs.reset();
        self.last_sample = None;
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        _gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let len = self.state.timesteps.len();
        let out = f32(model_output)?;
        let mut sample = f32(sample)?;
        let cfg = &self.state.cfg;
        let use_corrector = i > 0 && !cfg.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let order = if cfg.lower_order_final { cfg.solver_order.min(len - i) } else { cfg.solver_order };
        let converted = self.convert(&out, &sample, self.state.sigmas[i])?;
        if use_corrector {
            let last =
                self.last_sample.as_ref().map(Tensor::shallow_clone).ok_or_else(|| anyhow::anyhow!("internal"))?;
            sample = self.corrector(&converted, &last, i, self.this_order)?;
        }
        self.outputs.push(converted);
        self.this_order = order.min(self.outputs.lower_order_nums() + 1);
        self.last_sample = Some(sample.shallow_clone());
        let prev = self.predictor(&sample, i, self.this_order)?;
        self.outputs.count_step();
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
