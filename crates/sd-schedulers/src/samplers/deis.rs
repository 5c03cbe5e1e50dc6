//! DEIS multistep with the log-ρ polynomial extrapolation (Zhang & Chen 2022, arXiv 2204.13902) — diffusers
//! `DEISMultistepScheduler` (orders 1–3; the only algorithm diffusers implements, "deis"/"logrho").

use crate::choice::Schedule;
use crate::common::{f32, lin};
use crate::config::{AlgorithmType, FinalSigmas, SolverType};
use crate::descriptor::{Models, boxed, Class, Descriptor, Lit, NO_PRESET};
use crate::dpm_math::convert_model_output;
use crate::dpm_sched::{self, alpha_sigma, lambda, Flavor};
use crate::multistep::ModelOutputs;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

const FLAVOR: Flavor =
    Flavor { lambda_clip: false, cfg_minmax: false, final_from_respaced: true, always_round_karras: true };

pub static CLASS: Class = Class {
    name: "DEISMultistepScheduler",
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
        "timestep_spacing",
        "steps_offset",
    ],
    defaults: |c| {
        c.algorithm_type = AlgorithmType::Deis;
        c.solver_type = SolverType::Logrho;
    },
    unsupported: &[
        ("use_flow_sigmas", Lit::Bool(false)),
        ("flow_shift", Lit::Num(1.0)),
        ("use_dynamic_shifting", Lit::Bool(false)),
        ("time_shift_type", Lit::Str("exponential")),
    ],
};

pub static DEIS: Descriptor = Descriptor {
    name: "deis",
    a1111: &["DEIS"],
    class: &CLASS,
    preset: NO_PRESET,
    schedules: &[Schedule::Normal, Schedule::Karras, Schedule::Exponential, Schedule::Beta, Schedule::SgmUniform],
    options: &[],
    models: Models::Unet,
    description: "DEIS multistep (log-rho), second order",
    build: |d, c| boxed(Deis::new(d, c)),
};

pub struct Deis {
    state: SamplerState,
    train: TrainSchedule,
    /// ε predictions (DEIS extrapolates the noise, whatever the model predicts).
    outputs: ModelOutputs,
}

/// ρ = σ_t / α_t in float32, as diffusers computes it.
fn rho(sigma: f64) -> f32 {
    let s = sigma as f32;
    let a = 1.0 / (s * s + 1.0).sqrt();
    (s * a) / a
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
    pub fn new(d: &'static Descriptor, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let mut state = SamplerState::new(d, cfg, Family::DpmSolver)?;
        let cfg = &mut state.cfg;
        ensure!(
            matches!(
                cfg.algorithm_type,
                AlgorithmType::Deis | AlgorithmType::DpmSolver | AlgorithmType::DpmSolverPlusPlus
            ),
            "DEIS `algorithm_type` {} is not implemented (diffusers has only \"deis\")",
            crate::config::json_name(&cfg.algorithm_type)
        );
        ensure!((1..=3).contains(&cfg.solver_order), "solver_order must be 1, 2 or 3 (got {})", cfg.solver_order);
        cfg.algorithm_type = AlgorithmType::Deis;
        cfg.solver_type = SolverType::Logrho;
        // DEIS always ends at the smallest sigma of its schedule (never 0)
        cfg.final_sigmas_type = FinalSigmas::SigmaMin;
        let train = TrainSchedule::new(cfg)?;
        let outputs = ModelOutputs::new(cfg.solver_order);
        Ok(Self { state, train, outputs })
    }
}

impl Scheduler for Deis {
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
        let cfg = &self.state.cfg;
        let lower_final = i == len - 1 && cfg.lower_order_final && len < 15;
        let lower_second = i + 2 == len && cfg.lower_order_final && len < 15;
        let order = cfg.solver_order;
        let sample = f32(sample)?;
        let s = &self.state.sigmas;
        let x0 = convert_model_output(cfg, self.state.pred, true, &f32(model_output)?, &sample, s[i])?;
        let (a0, sg0) = alpha_sigma(s[i]);
        let eps = sample.f_sub(&x0.f_mul_scalar(a0)?)?.f_div_scalar(sg0)?;
        self.outputs.push(eps);
        let m = &self.outputs;
        let (a_t, sg_t) = alpha_sigma(s[i + 1]);
        let lower_order_nums = m.lower_order_nums();
        let prev = if order == 1 || lower_order_nums < 1 || lower_final {
            let h = lambda(s[i + 1]) - lambda(s[i]);
            lin(&[(a_t / a0, &sample), (-(sg_t * (h.exp() - 1.0)), m.get(0)?)])?
        } else if order == 2 || lower_order_nums < 2 || lower_second {
            let (rt, r0, r1) = (rho(s[i + 1]), rho(s[i]), rho(s[i - 1]));
            let c1 = (ind2(rt, r0, r1) - ind2(r0, r0, r1)) as f64;
            let c2 = (ind2(rt, r1, r0) - ind2(r0, r1, r0)) as f64;
            lin(&[(a_t / a0, &sample), (a_t * c1, m.get(0)?), (a_t * c2, m.get(1)?)])?
        } else {
            let (rt, r0, r1, r2) = (rho(s[i + 1]), rho(s[i]), rho(s[i - 1]), rho(s[i - 2]));
            let c1 = (ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2)) as f64;
            let c2 = (ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0)) as f64;
            let c3 = (ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1)) as f64;
            lin(&[(a_t / a0, &sample), (a_t * c1, m.get(0)?), (a_t * c2, m.get(1)?), (a_t * c3, m.get(2)?)])?
        };
        self.outputs.count_step();
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
