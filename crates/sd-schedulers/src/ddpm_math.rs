//! The x0 / ε algebra of the ᾱ-parameterised samplers (DDIM, DDPM, LCM, TCD): x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε.

use crate::common::{lin2, threshold_sample};
use crate::{Prediction, SchedulerConfig};
use anyhow::{bail, Result};
use tch::Tensor;

/// x0 and ε from the model output at ᾱ_t.
pub fn x0_eps(pred: Prediction, sample: &Tensor, out: &Tensor, alpha_prod_t: f64) -> Result<(Tensor, Tensor)> {
    let (a, b) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    Ok(match pred {
        Prediction::Epsilon => (lin2(1.0 / a, sample, -b / a, out)?, out.shallow_clone()),
        Prediction::Sample => (out.shallow_clone(), lin2(1.0 / b, sample, -a / b, out)?),
        Prediction::VPrediction => (lin2(a, sample, -b, out)?, lin2(a, out, b, sample)?),
        // refused when the sampler is built (`SamplerState::new`); no ᾱ-parameterised step reads a velocity
        Prediction::FlowPrediction => bail!("prediction_type flow_prediction is not an ᾱ-parameterised prediction"),
    })
}

/// Thresholding or clipping of x0, as the ᾱ-parameterised diffusers schedulers do.
pub fn clip_x0(cfg: &SchedulerConfig, x0: Tensor) -> Result<Tensor> {
    if cfg.thresholding {
        threshold_sample(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    } else if cfg.clip_sample {
        Ok(x0.f_clamp(-cfg.clip_sample_range, cfg.clip_sample_range)?)
    } else {
        Ok(x0)
    }
}
