//! DPM-Solver(++) singlestep (Lu et al., arXiv 2206.00927 / 2211.01095) — diffusers `DPMSolverSinglestepScheduler`.
//! Steps are grouped by an order list ([1, 2, 1, 2, …] for order 2): inside a group every update restarts from the
//! sample at the group's start, using the model outputs gathered so far in the group.

use crate::choice::Schedule;
use crate::common::{f32, lin, step_noise};
use crate::config::{AlgorithmType, FinalSigmas, TimestepSpacing};
use crate::descriptor::{Models, boxed, Class, Descriptor, Lit};
use crate::dpm_math::{convert_model_output, parse_algo, Algo};
use crate::dpm_sched::{self, alpha_sigma, lambda, Flavor};
use crate::multistep::ModelOutputs;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

/// A coefficient and the difference term it multiplies.
type Term = (f64, Tensor);

const FLAVOR: Flavor =
    Flavor { lambda_clip: true, cfg_minmax: false, final_from_respaced: false, always_round_karras: true };

pub static CLASS: Class = Class {
    name: "DPMSolverSinglestepScheduler",
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
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "final_sigmas_type",
        "lambda_min_clipped",
        "variance_type",
    ],
    defaults: |c| c.lower_order_final = false,
    unsupported: &[
        ("use_flow_sigmas", Lit::Bool(false)),
        ("flow_shift", Lit::Num(1.0)),
        ("use_dynamic_shifting", Lit::Bool(false)),
        ("time_shift_type", Lit::Str("exponential")),
    ],
};

pub static DPMPP_2S: Descriptor = Descriptor {
    name: "dpmpp-2s",
    a1111: &[],
    class: &CLASS,
    preset: |c| {
        c.algorithm_type = AlgorithmType::DpmSolverPlusPlus;
        c.solver_order = 2;
    },
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta],
    options: &[],
    models: Models::Unet,
    description:
        "DPM-Solver++ singlestep, second order (diffusers' closest to A1111 DPM++ 2S a, without the ancestral noise)",
    build: |d, c| boxed(DpmSinglestep::new(d, c)),
};

pub struct DpmSinglestep {
    state: SamplerState,
    algo: Algo,
    heun: bool,
    train: TrainSchedule,
    orders: Vec<usize>,
    outputs: ModelOutputs,
    group_sample: Option<Tensor>,
}

/// diffusers' `get_order_list`.
fn order_list(steps: usize, order: usize, lower_order_final: bool, final_zero: bool) -> Vec<usize> {
    let rep = |pat: &[usize], k: usize| pat.iter().cycle().take(pat.len() * k).cloned().collect::<Vec<_>>();
    let mut o = if lower_order_final {
        match order {
            3 => match steps % 3 {
                0 => [rep(&[1, 2, 3], steps / 3 - 1), vec![1, 2, 1]].concat(),
                1 => [rep(&[1, 2, 3], steps / 3), vec![1]].concat(),
                _ => [rep(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
            },
            2 => {
                if steps.is_multiple_of(2) {
                    [rep(&[1, 2], steps / 2 - 1), vec![1, 1]].concat()
                } else {
                    [rep(&[1, 2], steps / 2), vec![1]].concat()
                }
            }
            _ => vec![1; steps],
        }
    } else {
        match order {
            3 => rep(&[1, 2, 3], steps / 3),
            2 => rep(&[1, 2], steps / 2),
            _ => vec![1; steps],
        }
    };
    if final_zero {
        if let Some(l) = o.last_mut() {
            *l = 1;
        }
    }
    o
}

impl DpmSinglestep {
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let mut state = SamplerState::new(d, cfg, Family::DpmSolver)?;
        let cfg = &mut state.cfg;
        let (algo, heun) = parse_algo(cfg)?;
        if algo == Algo::SdeDpmSolver {
            bail!("DPM-Solver singlestep has no sde-dpmsolver variant (diffusers neither)");
        }
        // the class has no spacing option: its schedule is always "linspace"
        cfg.timestep_spacing = TimestepSpacing::Linspace;
        let train = TrainSchedule::new(cfg)?;
        let outputs = ModelOutputs::new(cfg.solver_order);
        Ok(Self { state, algo, heun, train, orders: vec![], outputs, group_sample: None })
    }

    fn update(&self, x: &Tensor, i: usize, order: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let s = &self.state.sigmas;
        let (a_t, sg_t) = alpha_sigma(s[i + 1]);
        // the group started at sigma s[i + 1 - order]
        let (a_b, sg_b) = alpha_sigma(s[i + 1 - order]);
        let h = lambda(s[i + 1]) - lambda(s[i + 1 - order]);
        let (em, ep, e2) = ((-h).exp(), h.exp(), (-2.0 * h).exp());
        let nz = || noise.ok_or_else(|| anyhow::anyhow!("internal: SDE update without noise"));
        // (d0, d1 coefficient for the "first derivative" term, optional d2 term)
        let (d0, d1, d2): (Tensor, Option<Term>, Option<Term>) = match order {
            1 => (self.outputs.get(0)?.shallow_clone(), None, None),
            2 => {
                let (m0, m1) = (self.outputs.get(0)?, self.outputs.get(1)?);
                let r0 = (lambda(s[i]) - lambda(s[i - 1])) / h;
                let d1 = m0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
                let c = match (self.algo, self.heun) {
                    (Algo::DpmSolverPP, false) => -0.5 * (a_t * (em - 1.0)),
                    (Algo::DpmSolverPP, true) => a_t * ((em - 1.0) / h + 1.0),
                    (Algo::DpmSolver, false) => -0.5 * (sg_t * (ep - 1.0)),
                    (Algo::DpmSolver, true) => -(sg_t * ((ep - 1.0) / h - 1.0)),
                    (_, false) => 0.5 * (a_t * (1.0 - e2)),
                    (_, true) => a_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                };
                (m1.shallow_clone(), Some((c, d1)), None)
            }
            _ => {
                let (m0, m1, m2) = (self.outputs.get(0)?, self.outputs.get(1)?, self.outputs.get(2)?);
                let l2 = lambda(s[i - 2]);
                let (r0, r1) = ((lambda(s[i]) - l2) / h, (lambda(s[i - 1]) - l2) / h);
                let d1_0 = m1.f_sub(m2)?.f_mul_scalar(1.0 / r1)?;
                let d1_1 = m0.f_sub(m2)?.f_mul_scalar(1.0 / r0)?;
                let d1 = lin(&[(r0 / (r0 - r1), &d1_0), (-r1 / (r0 - r1), &d1_1)])?;
                let d2 = lin(&[(2.0 / (r0 - r1), &d1_1), (-2.0 / (r0 - r1), &d1_0)])?;
                match (self.algo, self.heun) {
                    (Algo::DpmSolverPP, false) => {
                        (m2.shallow_clone(), Some((a_t * ((em - 1.0) / h + 1.0), d1_1)), None)
                    }
                    (Algo::DpmSolverPP, true) => (
                        m2.shallow_clone(),
                        Some((a_t * ((em - 1.0) / h + 1.0), d1)),
                        Some((-(a_t * ((em - 1.0 + h) / (h * h) - 0.5)), d2)),
                    ),
                    (Algo::DpmSolver, false) => {
                        (m2.shallow_clone(), Some((-(sg_t * ((ep - 1.0) / h - 1.0)), d1_1)), None)
                    }
                    (Algo::DpmSolver, true) => (
                        m2.shallow_clone(),
                        Some((-(sg_t * ((ep - 1.0) / h - 1.0)), d1)),
                        Some((-(sg_t * ((ep - 1.0 - h) / (h * h) - 0.5)), d2)),
                    ),
                    (_, false) => (m2.shallow_clone(), Some((a_t * ((1.0 - e2) / (-2.0 * h) + 1.0), d1_1)), None),
                    (_, true) => {
                        bail!("third-order singlestep sde-dpmsolver++ with solver_type heun is not implemented")
                    }
                }
            }
        };
        let mut terms: Vec<(f64, &Tensor)> = match self.algo {
            Algo::DpmSolverPP => vec![(sg_t / sg_b, x), (-(a_t * (em - 1.0)), &d0)],
            Algo::DpmSolver => vec![(a_t / a_b, x), (-(sg_t * (ep - 1.0)), &d0)],
            _ => vec![(sg_t / sg_b * em, x), (a_t * (1.0 - e2), &d0)],
        };
        if let Some((c, t)) = &d1 {
            terms.push((*c, t));
        }
        if let Some((c, t)) = &d2 {
            terms.push((*c, t));
        }
        if self.algo == Algo::SdeDpmSolverPP {
            terms.push((sg_t * (1.0 - e2).sqrt(), nz()?));
        }
        lin(&terms)
    }
}

impl Scheduler for DpmSinglestep {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        let cfg = &self.state.cfg;
        check_steps(cfg, n)?;
        let s = dpm_sched::spaced_as(cfg, &self.train, n, FLAVOR)?;
        let mut lof = cfg.lower_order_final;
        if !lof && (!n.is_multiple_of(cfg.solver_order) || cfg.final_sigmas_type == FinalSigmas::Zero) {
            lof = true; // diffusers switches lower_order_final on in these cases
        }
        self.orders = order_list(n, cfg.solver_order, lof, cfg.final_sigmas_type == FinalSigmas::Zero);
        ensure!(self.orders.len() == n, "internal: order list has {} entries for {n} steps", self.orders.len());
        self.state.set_schedule(s.timesteps, s.sigmas);
        self.outputs.reset();
        self.group_sample = None;
        Ok(())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        gen: &mut TorchGenerator,
    ) -> Result<Tensor> {
        let i = self.state.step_index(timestep)?;
        let sample = f32(sample)?;
        let data_pred = matches!(self.algo, Algo::DpmSolverPP | Algo::SdeDpmSolverPP);
        let m = convert_model_output(
            &self.state.cfg,
            self.state.pred,
            data_pred,
            &f32(model_output)?,
            &sample,
            self.state.sigmas[i],
        )?;
        self.outputs.push(m);
        let noise = (self.algo == Algo::SdeDpmSolverPP).then(|| step_noise(model_output, gen));
        let mut order = self.orders[i];
        while order > 1 && !self.outputs.has(order - 1) {
            order -= 1;
        }
        if order == 1 {
            self.group_sample = Some(sample.shallow_clone());
        }
        let x = self
            .group_sample
            .as_ref()
            .map(Tensor::shallow_clone)
            .ok_or_else(|| anyhow::anyhow!("internal: no group sample"))?;
        let prev = self.update(&x, i, order, noise.as_ref())?;
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
