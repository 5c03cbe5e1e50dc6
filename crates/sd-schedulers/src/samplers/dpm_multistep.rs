//! DPM-Solver / DPM-Solver++ multistep (Lu et al., arXiv 2206.00927 and 2211.01095), including the SDE variants
//! (DPM++ 2M SDE) — diffusers `DPMSolverMultistepScheduler`. SDE variants draw one `randn` per step, before the update.

use crate::common::{f32, lin, step_noise, threshold_sample};
use crate::dpm_sched::{self, alpha_sigma, lambda, DpmSchedule};
use crate::multistep::ModelOutputs;
use crate::schedule::{check_steps, TrainSchedule};
use crate::state::{Family, SamplerState};
use crate::{Prediction, Scheduler, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use sd_core::TorchGenerator;
use tch::{Device, Tensor};

#[derive(Clone, Copy, PartialEq)]
pub enum Algo {
    DpmSolver,
    DpmSolverPP,
    SdeDpmSolver,
    SdeDpmSolverPP,
}

pub struct DpmMultistep {
    state: SamplerState,
    algo: Algo,
    heun: bool,
    train: TrainSchedule,
    outputs: ModelOutputs,
}

/// Parse `algorithm_type` / `solver_type` the way the DPM-Solver classes normalise them.
pub fn parse_algo(cfg: &mut SchedulerConfig) -> Result<(Algo, bool)> {
    let algo = match cfg.algorithm_type.as_str() {
        "dpmsolver" => Algo::DpmSolver,
        "dpmsolver++" | "deis" => Algo::DpmSolverPP,
        "sde-dpmsolver" => Algo::SdeDpmSolver,
        "sde-dpmsolver++" => Algo::SdeDpmSolverPP,
        other => bail!(
            "scheduler config field `algorithm_type` is {other:?}; expected dpmsolver, dpmsolver++, sde-dpmsolver or sde-dpmsolver++"
        ),
    };
    let heun = match cfg.solver_type.as_str() {
        "midpoint" | "logrho" | "bh1" | "bh2" => false,
        "heun" => true,
        other => bail!("scheduler config field `solver_type` is {other:?}; expected \"midpoint\" or \"heun\""),
    };
    if matches!(algo, Algo::DpmSolver | Algo::SdeDpmSolver) && cfg.final_sigmas_type == "zero" {
        bail!(
            "algorithm_type {} needs final_sigmas_type \"sigma_min\" (diffusers refuses \"zero\")",
            cfg.algorithm_type
        );
    }
    ensure!((1..=3).contains(&cfg.solver_order), "solver_order must be 1, 2 or 3 (got {})", cfg.solver_order);
    if cfg.variance_type.as_deref().is_some_and(|v| v.starts_with("learned")) {
        bail!("variance_type {:?} (learned variance models) is not supported", cfg.variance_type);
    }
    Ok((algo, heun))
}

impl DpmMultistep {
    pub fn new(name: &str, cfg: SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        let mut state = SamplerState::new(name, cfg, Family::DpmSolver)?;
        let (algo, heun) = parse_algo(&mut state.cfg)?;
        let train = TrainSchedule::new(&state.cfg)?;
        let outputs = ModelOutputs::new(state.cfg.solver_order);
        Ok(Self { state, algo, heun, train, outputs })
    }

    fn reset(&mut self, s: DpmSchedule) {
        self.state.set_schedule(s.timesteps, s.sigmas);
        self.outputs.reset();
    }

    /// x0 (DPM-Solver++) or ε (DPM-Solver) from the raw model output.
    fn convert(&self, out: &Tensor, sample: &Tensor, i: usize) -> Result<Tensor> {
        let data_pred = matches!(self.algo, Algo::DpmSolverPP | Algo::SdeDpmSolverPP);
        convert_model_output(&self.state.cfg, self.state.pred, data_pred, out, sample, self.state.sigmas[i])
    }

    fn first_order(&self, m0: &Tensor, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (s_t, s_s) = (self.state.sigmas[i + 1], self.state.sigmas[i]);
        let ((a_t, sg_t), (a_s, sg_s)) = (alpha_sigma(s_t), alpha_sigma(s_s));
        let h = lambda(s_t) - lambda(s_s);
        Ok(match self.algo {
            Algo::DpmSolverPP => lin(&[(sg_t / sg_s, sample), (-(a_t * ((-h).exp() - 1.0)), m0)])?,
            Algo::DpmSolver => lin(&[(a_t / a_s, sample), (-(sg_t * (h.exp() - 1.0)), m0)])?,
            Algo::SdeDpmSolverPP => lin(&[
                (sg_t / sg_s * (-h).exp(), sample),
                (a_t * (1.0 - (-2.0 * h).exp()), m0),
                (sg_t * (1.0 - (-2.0 * h).exp()).sqrt(), need(noise)?),
            ])?,
            Algo::SdeDpmSolver => lin(&[
                (a_t / a_s, sample),
                (-2.0 * (sg_t * (h.exp() - 1.0)), m0),
                (sg_t * ((2.0 * h).exp() - 1.0).sqrt(), need(noise)?),
            ])?,
        })
    }

    fn second_order(&self, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (m0, m1) = (self.outputs.get(0)?, self.outputs.get(1)?);
        let s = &self.state.sigmas;
        let (s_t, s0, s1) = (s[i + 1], s[i], s[i - 1]);
        let ((a_t, sg_t), (a0, sg0)) = (alpha_sigma(s_t), alpha_sigma(s0));
        let (l_t, l0, l1) = (lambda(s_t), lambda(s0), lambda(s1));
        let (h, h0) = (l_t - l0, l0 - l1);
        let r0 = h0 / h;
        let d1 = m0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
        let (em, ep) = ((-h).exp(), h.exp());
        Ok(match (self.algo, self.heun) {
            (Algo::DpmSolverPP, false) => {
                lin(&[(sg_t / sg0, sample), (-(a_t * (em - 1.0)), m0), (-0.5 * (a_t * (em - 1.0)), &d1)])?
            }
            (Algo::DpmSolverPP, true) => {
                lin(&[(sg_t / sg0, sample), (-(a_t * (em - 1.0)), m0), (a_t * ((em - 1.0) / h + 1.0), &d1)])?
            }
            (Algo::DpmSolver, false) => {
                lin(&[(a_t / a0, sample), (-(sg_t * (ep - 1.0)), m0), (-0.5 * (sg_t * (ep - 1.0)), &d1)])?
            }
            (Algo::DpmSolver, true) => {
                lin(&[(a_t / a0, sample), (-(sg_t * (ep - 1.0)), m0), (-(sg_t * ((ep - 1.0) / h - 1.0)), &d1)])?
            }
            (Algo::SdeDpmSolverPP, heun) => {
                let e2 = (-2.0 * h).exp();
                let c1 = if heun { a_t * ((1.0 - e2) / (-2.0 * h) + 1.0) } else { 0.5 * (a_t * (1.0 - e2)) };
                lin(&[
                    (sg_t / sg0 * em, sample),
                    (a_t * (1.0 - e2), m0),
                    (c1, &d1),
                    (sg_t * (1.0 - e2).sqrt(), need(noise)?),
                ])?
            }
            (Algo::SdeDpmSolver, heun) => {
                let c1 = if heun { -2.0 * (sg_t * ((ep - 1.0) / h - 1.0)) } else { -(sg_t * (ep - 1.0)) };
                lin(&[
                    (a_t / a0, sample),
                    (-2.0 * (sg_t * (ep - 1.0)), m0),
                    (c1, &d1),
                    (sg_t * ((2.0 * h).exp() - 1.0).sqrt(), need(noise)?),
                ])?
            }
        })
    }

    fn third_order(&self, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Result<Tensor> {
        let (m0, m1, m2) = (self.outputs.get(0)?, self.outputs.get(1)?, self.outputs.get(2)?);
        let s = &self.state.sigmas;
        let ((a_t, sg_t), (a0, sg0)) = (alpha_sigma(s[i + 1]), alpha_sigma(s[i]));
        let (l_t, l0, l1, l2) = (lambda(s[i + 1]), lambda(s[i]), lambda(s[i - 1]), lambda(s[i - 2]));
        let (h, h0, h1) = (l_t - l0, l0 - l1, l1 - l2);
        let (r0, r1) = (h0 / h, h1 / h);
        let d1_0 = m0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
        let d1_1 = m1.f_sub(m2)?.f_mul_scalar(1.0 / r1)?;
        let diff = d1_0.f_sub(&d1_1)?;
        let d1 = d1_0.f_add(&diff.f_mul_scalar(r0 / (r0 + r1))?)?;
        let d2 = diff.f_mul_scalar(1.0 / (r0 + r1))?;
        let (em, ep) = ((-h).exp(), h.exp());
        Ok(match self.algo {
            Algo::DpmSolverPP => lin(&[
                (sg_t / sg0, sample),
                (-(a_t * (em - 1.0)), m0),
                (a_t * ((em - 1.0) / h + 1.0), &d1),
                (-(a_t * ((em - 1.0 + h) / (h * h) - 0.5)), &d2),
            ])?,
            Algo::DpmSolver => lin(&[
                (a_t / a0, sample),
                (-(sg_t * (ep - 1.0)), m0),
                (-(sg_t * ((ep - 1.0) / h - 1.0)), &d1),
                (-(sg_t * ((ep - 1.0 - h) / (h * h) - 0.5)), &d2),
            ])?,
            Algo::SdeDpmSolverPP => {
                let e2 = (-2.0 * h).exp();
                lin(&[
                    (sg_t / sg0 * em, sample),
                    (a_t * (1.0 - e2), m0),
                    (a_t * ((1.0 - e2) / (-2.0 * h) + 1.0), &d1),
                    (a_t * ((1.0 - e2 - 2.0 * h) / (2.0 * h).powi(2) - 0.5), &d2),
                    (sg_t * (1.0 - e2).sqrt(), need(noise)?),
                ])?
            }
            Algo::SdeDpmSolver => bail!("third-order sde-dpmsolver is not defined (diffusers returns nothing for it)"),
        })
    }
}

fn need(noise: Option<&Tensor>) -> Result<&Tensor> {
    noise.ok_or_else(|| anyhow::anyhow!("internal: SDE update without noise"))
}

/// `convert_model_output` of the DPM-Solver family: x0 for data-prediction solvers, ε for noise-prediction ones.
pub fn convert_model_output(
    cfg: &SchedulerConfig,
    pred: Prediction,
    data_pred: bool,
    out: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    let (a, s) = alpha_sigma(sigma);
    if data_pred {
        let x0 = predicted_x0(pred, out, sample, sigma)?;
        if cfg.thresholding {
            return threshold_sample(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value);
        }
        Ok(x0)
    } else {
        let eps = predicted_noise(pred, out, sample, sigma)?;
        if cfg.thresholding {
            let x0 = sample.f_sub(&eps.f_mul_scalar(s)?)?.f_div_scalar(a)?;
            let x0 = threshold_sample(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)?;
            return Ok(sample.f_sub(&x0.f_mul_scalar(a)?)?.f_div_scalar(s)?);
        }
        Ok(eps)
    }
}

/// x0 from the model output at VP sigma `sigma` (no thresholding).
pub fn predicted_x0(pred: Prediction, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
    let (a, s) = alpha_sigma(sigma);
    Ok(match pred {
        Prediction::Epsilon => sample.f_sub(&out.f_mul_scalar(s)?)?.f_div_scalar(a)?,
        Prediction::Sample => out.shallow_clone(),
        Prediction::VPrediction => lin(&[(a, sample), (-s, out)])?,
    })
}

/// ε from the model output at VP sigma `sigma` (no thresholding).
pub fn predicted_noise(pred: Prediction, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
    let (a, s) = alpha_sigma(sigma);
    Ok(match pred {
        Prediction::Epsilon => out.shallow_clone(),
        Prediction::Sample => sample.f_sub(&out.f_mul_scalar(a)?)?.f_div_scalar(s)?,
        Prediction::VPrediction => lin(&[(a, out), (s, sample)])?,
    })
}

impl Scheduler for DpmMultistep {
    fn state(&self) -> &SamplerState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut SamplerState {
        &mut self.state
    }
    fn set_timesteps(&mut self, n: usize, _device: Device) -> Result<()> {
        check_steps(&self.state.cfg, n)?;
        let s = dpm_sched::spaced(&self.state.cfg, &self.train, n)?;
        self.reset(s);
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
        let len = self.state.timesteps.len();
        let c = &self.state.cfg;
        let lower_final =
            i == len - 1 && (c.euler_at_final || (c.lower_order_final && len < 15) || c.final_sigmas_type == "zero");
        let lower_second = i + 2 == len && c.lower_order_final && len < 15;
        let order = c.solver_order;
        let out = f32(model_output)?;
        let sample = f32(sample)?;
        let m = self.convert(&out, &sample, i)?;
        self.outputs.push(m.shallow_clone());
        let noise = match self.algo {
            // diffusers draws this noise in float32 whatever the model's dtype.
            Algo::SdeDpmSolver | Algo::SdeDpmSolverPP => Some(step_noise(&out, gen)),
            _ => None,
        };
        let lower_order_nums = self.outputs.lower_order_nums();
        let prev = if order == 1 || lower_order_nums < 1 || lower_final {
            self.first_order(&m, &sample, noise.as_ref(), i)?
        } else if order == 2 || lower_order_nums < 2 || lower_second {
            self.second_order(&sample, noise.as_ref(), i)?
        } else {
            self.third_order(&sample, noise.as_ref(), i)?
        };
        self.outputs.count_step();
        self.state.idx.advance();
        Ok(prev.f_to_kind(model_output.kind())?)
    }
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }
    fn set_custom_timesteps(&mut self, timesteps: &[f64], _device: Device) -> Result<()> {
        let s = dpm_sched::custom(&self.state.cfg, &self.train, timesteps)?;
        self.reset(s);
        Ok(())
    }
}
