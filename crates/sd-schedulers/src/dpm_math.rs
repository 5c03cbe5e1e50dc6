//! The model-output algebra of the DPM-Solver family (DPM-Solver multistep and singlestep, DEIS, UniPC), in the
//! variance-preserving reading of the sigma table (α = 1/√(σ²+1), σ_vp = σ·α): which solver variant a config asks
//! for, and the conversion of the raw model output to the x0 or ε the solver extrapolates.

use crate::common::{lin, threshold_sample};
use crate::config::{AlgorithmType, FinalSigmas, SolverType, VarianceType};
use crate::dpm_sched::alpha_sigma;
use crate::{Prediction, SchedulerConfig};
use anyhow::{bail, ensure, Result};
use tch::Tensor;

/// The DPM-Solver variants diffusers implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    DpmSolver,
    DpmSolverPP,
    SdeDpmSolver,
    SdeDpmSolverPP,
}

/// `algorithm_type` / `solver_type` the way the DPM-Solver classes normalise them (DEIS's "deis" reads as
/// DPM-Solver++, the other classes' solver types as midpoint); returns the variant and whether it uses the Heun
/// correction.
pub fn parse_algo(cfg: &SchedulerConfig) -> Result<(Algo, bool)> {
    let algo = match cfg.algorithm_type {
        AlgorithmType::DpmSolver => Algo::DpmSolver,
        AlgorithmType::DpmSolverPlusPlus | AlgorithmType::Deis => Algo::DpmSolverPP,
        AlgorithmType::SdeDpmSolver => Algo::SdeDpmSolver,
        AlgorithmType::SdeDpmSolverPlusPlus => Algo::SdeDpmSolverPP,
    };
    let heun = match cfg.solver_type {
        SolverType::Midpoint | SolverType::Logrho | SolverType::Bh1 | SolverType::Bh2 => false,
        SolverType::Heun => true,
    };
    if matches!(algo, Algo::DpmSolver | Algo::SdeDpmSolver) && cfg.final_sigmas_type == FinalSigmas::Zero {
        bail!(
            "algorithm_type {} needs final_sigmas_type \"sigma_min\" (diffusers refuses \"zero\")",
            crate::config::json_name(&cfg.algorithm_type)
        );
    }
    ensure!((1..=3).contains(&cfg.solver_order), "solver_order must be 1, 2 or 3 (got {})", cfg.solver_order);
    if matches!(cfg.variance_type, Some(VarianceType::Learned | VarianceType::LearnedRange)) {
        bail!("variance_type {:?} (learned variance models) is not supported", cfg.variance_type);
    }
    Ok((algo, heun))
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
        // the velocity ε − x₀ over a flow sigma, where x = (1 − σ)·x₀ + σ·ε
        Prediction::FlowPrediction => sample.f_sub(&out.f_mul_scalar(sigma)?)?,
    })
}

/// ε from the model output at VP sigma `sigma` (no thresholding).
pub fn predicted_noise(pred: Prediction, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
    let (a, s) = alpha_sigma(sigma);
    Ok(match pred {
        Prediction::Epsilon => out.shallow_clone(),
        Prediction::Sample => sample.f_sub(&out.f_mul_scalar(a)?)?.f_div_scalar(s)?,
        Prediction::VPrediction => lin(&[(a, out), (s, sample)])?,
        Prediction::FlowPrediction => bail!("flow_prediction needs a data-prediction solver (dpmsolver++)"),
    })
}
