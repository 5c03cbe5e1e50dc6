//! The sigma schedule of the k-diffusion-style samplers (Euler, Heun, LMS, KDPM2, …), as
//! `EulerDiscreteScheduler.set_timesteps`: spaced timesteps → interpolated training sigmas → optional
//! Karras / exponential / beta re-spacing (timesteps recovered with `sigma_to_t`) → final sigma appended.

use crate::config::{FinalSigmas, Interpolation, SchedulerConfig, TimestepSpacing};
use crate::schedule::{spaced_timesteps_f32, TrainSchedule};
use crate::sigmas;
use anyhow::Result;

/// Timesteps (float32 values) and sigmas (float32 values, one longer: the final sigma).
#[derive(Debug, Clone, Default)]
pub struct KSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// Re-space `sigmas` (descending, as interpolated) with the config's Karras / exponential / beta flag, if any.
/// Returns `None` when no flag is set. `sigma_min`/`sigma_max` config values win over the schedule's ends.
pub fn respace(cfg: &SchedulerConfig, in_sigmas: &[f64], n: usize) -> Option<Vec<f64>> {
    let lo = cfg.sigma_min.unwrap_or(in_sigmas[in_sigmas.len() - 1]);
    let hi = cfg.sigma_max.unwrap_or(in_sigmas[0]);
    if cfg.use_karras_sigmas {
        Some(sigmas::karras(lo, hi, n))
    } else if cfg.use_exponential_sigmas {
        Some(sigmas::exponential(lo, hi, n))
    } else if cfg.use_beta_sigmas {
        Some(sigmas::beta(lo, hi, n))
    } else {
        None
    }
}

/// The sigma after the last step: 0, or the training schedule's smallest.
pub fn final_sigma(cfg: &SchedulerConfig, train: &TrainSchedule) -> f64 {
    match cfg.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => train.sigmas[0],
    }
}

/// `[x0, x1, x1, x2, x2, …]` (diffusers' `cat([x[:1], x[1:].repeat_interleave(2)])`): the layout of the
/// second-order classes, whose every step after the first takes two model evaluations.
pub fn interleave_tail(v: &[f64]) -> Vec<f64> {
    let mut out = vec![v[0]];
    for x in &v[1..] {
        out.push(*x);
        out.push(*x);
    }
    out
}

/// `EulerDiscreteScheduler.set_timesteps(num_inference_steps)`.
pub fn euler_schedule(cfg: &SchedulerConfig, train: &TrainSchedule, n: usize, final_sigma: f64) -> Result<KSchedule> {
    let ts = spaced_timesteps_f32(cfg, n)?;
    let mut sig: Vec<f64> = match cfg.interpolation_type {
        Interpolation::Linear => ts.iter().map(|&t| sigmas::interp_index(t, &train.sigmas)).collect(),
        Interpolation::LogLinear => {
            let (a, b) = (train.sigmas[train.sigmas.len() - 1].ln(), train.sigmas[0].ln());
            // torch.linspace in float32 of n + 1 log-sigmas, then exp
            let v = tch::Tensor::f_linspace(a, b, (n + 1) as i64, (tch::Kind::Float, tch::Device::Cpu))?.f_exp()?;
            Vec::<f64>::try_from(v.f_to_kind(tch::Kind::Double)?)?
        }
    };
    let mut timesteps = ts;
    if let Some(s) = respace(cfg, &sig, n) {
        timesteps = s.iter().map(|&x| sigmas::sigma_to_t(x, &train.log_sigmas)).collect();
        sig = s;
    }
    sig.push(final_sigma);
    Ok(KSchedule { timesteps: timesteps.into_iter().map(f32r).collect(), sigmas: sig.into_iter().map(f32r).collect() })
}

/// `euler_schedule` for the classes that have no `interpolation_type` option (always linear) and end at sigma 0:
/// EulerAncestral, LMS, KDPM2 (ancestral), and DPM++ 2S a, which follows EulerAncestral.
pub fn linear_schedule(cfg: &SchedulerConfig, train: &TrainSchedule, n: usize) -> Result<KSchedule> {
    let mut plain = cfg.clone();
    plain.interpolation_type = Interpolation::Linear;
    euler_schedule(&plain, train, n, 0.0)
}

/// `set_timesteps(sigmas=[...])`: custom sigmas (with the final one); timesteps from `sigma_to_t`.
pub fn from_sigmas(train: &TrainSchedule, custom: &[f64]) -> Result<KSchedule> {
    anyhow::ensure!(custom.len() >= 2, "a custom sigma list needs at least 2 values (the last is the final sigma)");
    let sig: Vec<f64> = custom.iter().map(|&s| f32r(s)).collect();
    let timesteps = sig[..sig.len() - 1].iter().map(|&s| f32r(sigmas::sigma_to_t(s, &train.log_sigmas))).collect();
    Ok(KSchedule { timesteps, sigmas: sig })
}

/// `set_timesteps(timesteps=[...])`: custom timesteps, sigmas interpolated, final sigma appended.
pub fn from_timesteps(
    cfg: &SchedulerConfig,
    train: &TrainSchedule,
    custom: &[f64],
    final_sigma: f64,
) -> Result<KSchedule> {
    cfg.check_custom_timesteps()?;
    anyhow::ensure!(!custom.is_empty(), "a custom timestep list must not be empty");
    let timesteps: Vec<f64> = custom.iter().map(|&t| f32r(t)).collect();
    let mut sig: Vec<f64> = timesteps.iter().map(|&t| sigmas::interp_index(t, &train.sigmas)).collect();
    sig.push(final_sigma);
    Ok(KSchedule { timesteps, sigmas: sig.into_iter().map(f32r).collect() })
}

/// Largest sigma (`init_noise_sigma` of the k-samplers: sqrt(σ²+1) for "leading" spacing, σ otherwise).
pub fn init_noise_sigma(cfg: &SchedulerConfig, sigmas: &[f64]) -> f64 {
    let max = sigmas.iter().cloned().fold(0.0, f64::max);
    if matches!(cfg.timestep_spacing, TimestepSpacing::Linspace | TimestepSpacing::Trailing) {
        max
    } else {
        f32r((max * max + 1.0).sqrt())
    }
}
