//! Pieces every sampler uses: the step-index bookkeeping, float32 upcasting, step noise, dynamic thresholding.

use anyhow::{ensure, Context, Result};
use sd_core::TorchGenerator;
use tch::{Kind, Tensor};

/// diffusers' `_step_index` / `_begin_index` pair. The index is found once (from `begin_index`, or from the first
/// timestep the pipeline passes, by nearest match) and then advanced by `step`, so later lookups never compare floats.
#[derive(Debug, Clone, Default)]
pub struct StepIndex {
    pub step: Option<usize>,
    pub begin: Option<usize>,
}

impl StepIndex {
    pub fn reset(&mut self) {
        self.step = None;
        self.begin = None;
    }

    /// The current index, initialising it on first use like diffusers' `_init_step_index`.
    pub fn get(&mut self, timesteps: &[f64], timestep: f64) -> Result<usize> {
        if let Some(i) = self.step {
            return Ok(i);
        }
        let i = match self.begin {
            Some(b) => {
                ensure!(
                    b < timesteps.len(),
                    "begin index {b} is past the end of the {}-step schedule",
                    timesteps.len()
                );
                b
            }
            None => index_for_timestep(timesteps, timestep)?,
        };
        self.step = Some(i);
        Ok(i)
    }

    /// The index for a `step` call: the schedule must be set, and `steps` steps exist in it (the sample after the
    /// last one is final), so a step past the end is an error instead of an out-of-bounds panic.
    pub fn for_step(&mut self, timesteps: &[f64], timestep: f64, steps: usize) -> Result<usize> {
        ensure!(!timesteps.is_empty(), "call set_timesteps before step");
        let i = self.get(timesteps, timestep)?;
        ensure!(i < steps, "step called after the last timestep");
        Ok(i)
    }

    pub fn advance(&mut self) {
        if let Some(i) = self.step.as_mut() {
            *i += 1;
        }
    }
}

/// Position of `timestep` in the schedule: nearest entry; when several are equally near (2nd-order samplers repeat
/// timesteps) the second one, as diffusers' `index_for_timestep` does for img2img.
pub fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Result<usize> {
    ensure!(!timesteps.is_empty(), "the sampler has no timesteps: call set_timesteps first");
    let best = timesteps.iter().map(|t| (t - timestep).abs()).fold(f64::INFINITY, f64::min);
    ensure!(best <= 0.5, "timestep {timestep} is not in this sampler's schedule");
    let hits: Vec<usize> =
        timesteps.iter().enumerate().filter(|(_, t)| (*t - timestep).abs() == best).map(|(i, _)| i).collect();
    Ok(if hits.len() > 1 { hits[1] } else { hits[0] })
}

/// Upcast to float32 (diffusers steps in float32 for most samplers).
pub fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_kind(Kind::Float)?)
}

/// `randn_tensor(like.shape, dtype=like.dtype, generator)` for step noise: drawn on the CPU generator in `like`'s
/// dtype and moved to its device. Samplers pass what their diffusers class passes (mostly the model output as the
/// network returned it, so a bf16 pipeline's noise carries bf16 rounding as in diffusers; the float32 upcast where
/// the class asks for float32). `TorchGenerator` reproduces torch's reduced-precision draws, which differ from the
/// float32 stream below 16 values.
pub fn step_noise(like: &Tensor, gen: &mut TorchGenerator) -> Tensor {
    gen.randn(&like.size(), like.kind(), like.device())
}

/// Imagen's dynamic thresholding (arXiv 2205.11487), as diffusers' `_threshold_sample`.
pub fn threshold_sample(x0: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let size = x0.size();
    ensure!(size.len() >= 2, "thresholding needs a batch × channels × … sample, got shape {size:?}");
    let flat = x0.f_to_kind(Kind::Float)?.f_reshape([size[0], -1])?;
    let s =
        flat.f_abs()?.f_quantile_scalar(ratio, Some(1), false, "linear").context("dynamic thresholding quantile")?;
    let s = s.f_clamp(1.0, max_value)?.f_unsqueeze(1)?;
    let clamped = flat.f_clamp_tensor(Some(&s.f_neg()?), Some(&s))?.f_div(&s)?;
    Ok(clamped.f_reshape(size.as_slice())?.f_to_kind(x0.kind())?)
}

/// Broadcast multiply-add helper: `a * x + b * y` with scalar coefficients.
pub fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul_scalar(a)?.f_add(&y.f_mul_scalar(b)?)?)
}

/// The denoised estimate x0 of the k-diffusion samplers from the model output at noise level `sigma`
/// (input scaled by 1/sqrt(σ²+1)).
pub fn k_denoised(pred: crate::Prediction, sample: &Tensor, model_output: &Tensor, sigma: f64) -> Result<Tensor> {
    use crate::Prediction::*;
    Ok(match pred {
        Epsilon => sample.f_sub(&model_output.f_mul_scalar(sigma)?)?,
        VPrediction => {
            let s2 = sigma * sigma + 1.0;
            lin2(-sigma / s2.sqrt(), model_output, 1.0 / s2, sample)?
        }
        Sample => model_output.shallow_clone(),
        // refused when the sampler is built (`SamplerState::new`)
        FlowPrediction => anyhow::bail!("prediction_type flow_prediction is not a k-diffusion prediction"),
    })
}

/// k-diffusion's Euler move of `sample` from `sigma` to `sigma_to` along d = (x − x0)/σ (its `to_d`).
pub fn k_euler(sample: &Tensor, x0: &Tensor, sigma: f64, sigma_to: f64) -> Result<Tensor> {
    let d = sample.f_sub(x0)?.f_div_scalar(sigma)?;
    Ok(sample.f_add(&d.f_mul_scalar(sigma_to - sigma)?)?)
}

/// Scale by 1/sqrt(σ²+1) (the k-samplers' `scale_model_input`).
pub fn k_scale(sample: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(sample.f_div_scalar((sigma * sigma + 1.0).sqrt())?)
}

/// The schedule index `add_noise` uses: diffusers' order (step index, else begin index, else timestep lookup).
pub fn noise_index(idx: &StepIndex, timesteps: &[f64], timestep: f64) -> Result<usize> {
    match (idx.begin, idx.step) {
        (Some(_), Some(s)) => Ok(s),
        (Some(b), None) => Ok(b),
        (None, _) => index_for_timestep(timesteps, timestep),
    }
}

/// Σ cᵢ·xᵢ.
pub fn lin(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc = terms[0].1.f_mul_scalar(terms[0].0)?;
    for (c, x) in &terms[1..] {
        acc = acc.f_add(&x.f_mul_scalar(*c)?)?;
    }
    Ok(acc)
}
