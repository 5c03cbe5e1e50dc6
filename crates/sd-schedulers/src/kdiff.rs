//! k-diffusion's scalar arithmetic, shared by the k-diffusion ports in `samplers/` (DPM++ SDE, DPM++ 2S a, …): it
//! computes step coefficients on 0-d float32 tensors, so they are computed here in float32 with LibTorch's own
//! log/exp/expm1, which the Brownian query times and the step results depend on to the last bit.

use crate::Prediction;
use anyhow::Result;
use tch::Tensor;

/// torch float32 `log` of a scalar.
pub fn t_log(x: f32) -> f32 {
    Tensor::from(x).log().double_value(&[]) as f32
}

/// torch float32 `exp` of a scalar.
pub fn t_exp(x: f32) -> f32 {
    Tensor::from(x).exp().double_value(&[]) as f32
}

/// torch float32 `expm1` of a scalar.
pub fn t_expm1(x: f32) -> f32 {
    Tensor::from(x).expm1().double_value(&[]) as f32
}

/// k-diffusion's `t_fn`: −log σ.
pub fn t_fn(sigma: f32) -> f32 {
    -t_log(sigma)
}

/// k-diffusion's `sigma_fn`: exp(−t).
pub fn sigma_fn(t: f32) -> f32 {
    t_exp(-t)
}

/// The denoised x0 from the model output at `sigma` (input scaled by 1/√(σ²+1)), in the float32 op order of
/// k-diffusion's `CompVisDenoiser` / `CompVisVDenoiser` wrappers and diffusers' k-samplers.
pub fn denoised32(pred: Prediction, sample: &Tensor, out: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok(match pred {
        Prediction::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            out.f_mul_scalar((-sigma / s2.sqrt()) as f64)?.f_add(&sample.f_div_scalar(s2 as f64)?)?
        }
        _ => sample.f_sub(&out.f_mul_scalar(sigma as f64)?)?,
    })
}
