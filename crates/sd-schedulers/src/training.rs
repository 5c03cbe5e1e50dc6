//! Training-side helpers (batched, integer timesteps) as `DDPMScheduler.add_noise` / `get_velocity`.

use crate::config::SchedulerConfig;
use crate::schedule::TrainSchedule;
use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// `(sqrt(ᾱ_t), sqrt(1 - ᾱ_t))` for a 1-D int64 tensor of timesteps, shaped to broadcast over `like`.
fn coefficients(cfg: &SchedulerConfig, timesteps: &Tensor, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let ts = TrainSchedule::new_exact_zero_snr(cfg)?;
    let t: Vec<i64> = Vec::<i64>::try_from(timesteps.f_to_kind(Kind::Int64)?.f_flatten(0, -1)?)?;
    ensure!(
        t.len() as i64 == like.size().first().copied().unwrap_or(0),
        "got {} timesteps for a batch of {}",
        t.len(),
        like.size().first().copied().unwrap_or(0)
    );
    let ac = t.iter().map(|&ti| ts.alpha_cumprod(ti).map(|a| a as f32)).collect::<Result<Vec<f32>>>()?;
    let ac = Tensor::from_slice(&ac).f_to(like.device())?;
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    let a = ac.f_sqrt()?.f_reshape(shape.as_slice())?.f_to_kind(like.kind())?;
    let s = ac.f_neg()?.f_add_scalar(1.0)?.f_sqrt()?.f_reshape(shape.as_slice())?.f_to_kind(like.kind())?;
    Ok((a, s))
}

/// `sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε` per batch element (DDPMScheduler.add_noise).
pub fn add_noise_batch(cfg: &SchedulerConfig, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
    let (a, s) = coefficients(cfg, timesteps, original)?;
    Ok(original.f_mul(&a)?.f_add(&noise.f_mul(&s)?)?)
}

/// The v-prediction target `sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0` (Salimans & Ho 2022; DDPMScheduler.get_velocity).
pub fn get_velocity(cfg: &SchedulerConfig, sample: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
    let (a, s) = coefficients(cfg, timesteps, sample)?;
    Ok(noise.f_mul(&a)?.f_sub(&sample.f_mul(&s)?)?)
}
