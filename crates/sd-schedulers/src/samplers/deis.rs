//! DEIS multistep with the log-ρ polynomial extrapolation (Zhang & Chen 2022, arXiv 2204.13902) — diffusers
//! `DEISMultistepScheduler` (orders 1–3; the only algorithm diffusers implements, "deis"/"logrho").

use crate::common::{f32, lin, noise_index, StepIndex};
use crate::dpm_sched::{self, alpha_sigma, lambda, DpmSchedule, Flavor};
use crate::samplers::dpm_multistep::convert_model_output;
use crate::schedule::{check_steps, TrainSchedule};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

const FLAVOR: Flavor = Flavor { lambda_clip: false, cfg_minmax: false, final_from_respaced: true, always_round_karras: true };

pub struct Deis {
    name: String,
    cfg: SchedulerConfig,
    pred: Prediction,
    train: TrainSchedule,
    sched: DpmSchedule,
    idx: StepIndex,
    outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

// diffusers evaluates these log-ρ integrals on float32 tensors, and the differences of nearly equal values below
// amplify that rounding; they are evaluated in f32 here too so that third-order DEIS stays step-exact.
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld) = (t.ln(), c.ln(), d.ln());
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    num / ((b.ln() - lc) * (b.ln() - ld))
}

impl Deis {
    pub fn new(name: &str, mut cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let pred = cfg.prediction()?;
        ensure!(
            matches!(cfg.algorithm_type.as_str(), "deis" | "dpmsolver" | "dpmsolver++"),
            "DEIS `algorithm_type` {:?} is not implemented (diffusers has only \"deis\")",
            cfg.algorithm_type
        );
        ensure!((1..=3).contains(&cfg.solver_order), "solver_order must be 1, 2 or 3 (got {})", cfg.solver_order);
        cfg.algorithm_type = "deis".into();
        cfg.solver_type = "logrho".into();
        // DEIS always ends at the smallest sigma of its schedule (never 0)
        cfg.final_sigmas_type = "sigma_min".into();
        let train = TrainSchedule::new(&cfg)?;
        let outputs = (0..cfg.solver_order).map(|_| None).collect();
        Ok(Self { name: name.into(), cfg, pred, train, sched: DpmSchedule::default(), idx: StepIndex::default(), outputs, lower_order_nums: 0 })
    }

    fn m(&self, back: usize) -> Result<&Tensor> {
        let n = self.outputs.len();
        self.outputs[n - 1 - back].as_ref().ok_or_else(|| anyhow::anyhow!("internal: DEIS history is missing an output"))
    }

    /// ρ = σ_t / α_t in float32, as diffusers computes it.
    fn rho(sigma: f64) -> f32 {
        let s = sigma as f32;
        let a = 1.0 / (s * s + 1.0).sqrt();
        (s * a) / a
    }
}

impl Scheduler for Deis {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.cfg, n)?;
        self.sched = dpm_sched::spaced_as(&self.cfg, &self.train, n, FLAVOR)?;
        self.outputs = (0..self.cfg.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.idx.reset();
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
        let lower_final = i == len - 1 && self.cfg.lower_order_final && len < 15;
        let lower_second = i + 2 == len && self.cfg.lower_order_final && len < 15;
        let sample = f32(sample)?;
        let s = &self.sched.sigmas;
        let x0 = convert_model_output(&self.cfg, self.pred, true, &f32(model_output)?, &sample, s[i])?;
        let (a0, sg0) = alpha_sigma(s[i]);
        let eps = sample.f_sub(&x0.f_mul_scalar(a0)?)?.f_div_scalar(sg0)?;
        self.outputs.rotate_left(1);
        let n = self.outputs.len();
        self.outputs[n - 1] = Some(eps);
        let order = self.cfg.solver_order;
        let (a_t, sg_t) = alpha_sigma(s[i + 1]);
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_final {
            let h = lambda(s[i + 1]) - lambda(s[i]);
            lin(&[(a_t / a0, &sample), (-(sg_t * (h.exp() - 1.0)), self.m(0)?)])?
        } else if order == 2 || self.lower_order_nums < 2 || lower_second {
            let (rt, r0, r1) = (Self::rho(s[i + 1]), Self::rho(s[i]), Self::rho(s[i - 1]));
            let c1 = (ind2(rt, r0, r1) - ind2(r0, r0, r1)) as f64;
            let c2 = (ind2(rt, r1, r0) - ind2(r0, r1, r0)) as f64;
            lin(&[(a_t / a0, &sample), (a_t * c1, self.m(0)?), (a_t * c2, self.m(1)?)])?
        } else {
            let (rt, r0, r1, r2) = (Self::rho(s[i + 1]), Self::rho(s[i]), Self::rho(s[i - 1]), Self::rho(s[i - 2]));
            let c1 = (ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2)) as f64;
            let c2 = (ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0)) as f64;
            let c3 = (ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1)) as f64;
            lin(&[(a_t / a0, &sample), (a_t * c1, self.m(0)?), (a_t * c2, self.m(1)?), (a_t * c3, self.m(2)?)])?
        };
        if self.lower_order_nums < order {
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
