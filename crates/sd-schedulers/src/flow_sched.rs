//! Sigma schedules of the rectified-flow samplers (SD3 / SD3.5): diffusers' `FlowMatchEulerDiscreteScheduler` and
//! `FlowMatchHeunDiscreteScheduler` tables, the DPM-Solver flow sigmas, and the static and resolution-dependent
//! ("dynamic") shifts that bend them towards noise.
//!
//! In a flow-matching model x_σ = (1 − σ)·x₀ + σ·ε with σ ∈ [0, 1], and the model is shown σ·T as its timestep
//! (T = `num_train_timesteps`). A larger image keeps more of its structure at a given σ, so SD3 spends more steps at
//! high σ: a static shift s maps σ ↦ s·σ / (1 + (s − 1)·σ), and a dynamic one maps σ ↦ eᵘ / (eᵘ + 1/σ − 1) with μ
//! growing linearly with the image's token count (`calculate_shift`).

use crate::config::SchedulerConfig;
use crate::ksched;
use crate::schedule::{check_steps, np_linspace};
use anyhow::{anyhow, ensure, Result};

/// The static shift s·σ / (1 + (s − 1)·σ), in the float precision the caller's values carry.
pub fn shifted(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// diffusers' exponential `time_shift(mu, 1.0, σ)`: eᵘ / (eᵘ + (1/σ − 1)), in float64 as its numpy arrays.
pub fn time_shift_exponential(mu: f64, sigma: f64) -> f64 {
    mu.exp() / (mu.exp() + (1.0 / sigma - 1.0))
}

/// diffusers' `calculate_shift` (the SD3 pipeline's μ): linear in the image's token count, from `base_shift` at
/// `base_image_seq_len` tokens to `max_shift` at `max_image_seq_len`.
pub fn calculate_shift(image_seq_len: usize, cfg: &SchedulerConfig) -> Result<f64> {
    let base_shift = cfg.base_shift.ok_or_else(|| anyhow!("use_dynamic_shifting needs `base_shift` in the config"))?;
    let max_shift = cfg.max_shift.ok_or_else(|| anyhow!("use_dynamic_shifting needs `max_shift` in the config"))?;
    let (base_len, max_len) = (cfg.base_image_seq_len as f64, cfg.max_image_seq_len as f64);
    ensure!(
        max_len != base_len,
        "base_image_seq_len and max_image_seq_len are both {base_len}: the dynamic shift needs two different lengths"
    );
    let m = (max_shift - base_shift) / (max_len - base_len);
    let b = base_shift - m * base_len;
    Ok(image_seq_len as f64 * m + b)
}

/// The ends (σ_max, σ_min) of the FlowMatch classes' construction-time table σ = t / T for t = T … 1, float32 values
/// as diffusers' `.item()` reads them: shifted by `shift`, unless the shift is dynamic (applied per `set_timesteps`).
pub fn train_ends(cfg: &SchedulerConfig, dynamic: bool) -> Result<(f64, f64)> {
    let n = cfg.num_train_timesteps;
    ensure!(n >= 1, "num_train_timesteps must be at least 1");
    ensure!(cfg.shift.is_finite() && cfg.shift > 0.0, "shift must be a finite number > 0 (got {})", cfg.shift);
    let sh = cfg.shift as f32;
    let train = |t: usize| {
        let s = t as f32 / n as f32;
        let s = if dynamic { s } else { sh * s / (1.0 + (sh - 1.0) * s) };
        s as f64
    };
    Ok((train(n), train(1)))
}

/// `FlowMatchEulerDiscreteScheduler.set_timesteps(n, mu=…)`'s sigmas (float32 values, without the final 0): σ·T
/// spaced evenly from σ_max·T to σ_min·T in float64, shifted statically or, with `mu`, dynamically, then re-spaced
/// by the Karras / exponential / beta flags. `mu` must be given exactly when the config's shift is dynamic.
pub fn euler_sigmas(cfg: &SchedulerConfig, ends: (f64, f64), n: usize, mu: Option<f64>) -> Result<Vec<f64>> {
    let t_train = cfg.num_train_timesteps as f64;
    let base = np_linspace(ends.0 * t_train, ends.1 * t_train, n).into_iter().map(|t| t / t_train);
    let base: Vec<f64> = match (cfg.use_dynamic_shifting, mu) {
        (true, Some(mu)) => {
            ensure!(mu.is_finite(), "mu must be a finite number (got {mu})");
            base.map(|s| time_shift_exponential(mu, s)).collect()
        }
        (true, None) => {
            return Err(anyhow!(
                "use_dynamic_shifting is set: the resolution-dependent shift `mu` must be given before set_timesteps"
            ))
        }
        (false, _) => base.map(|s| shifted(cfg.shift, s)).collect(),
    };
    Ok(ksched::respace(cfg, &base, n).unwrap_or(base).into_iter().map(|s| s as f32 as f64).collect())
}

/// The FlowMatchEuler sigma table a sampler runs over: the training table's ends, fixed at construction, and the
/// resolution-dependent `mu` of the next `set_timesteps` (dynamic shifting only).
#[derive(Debug, Clone)]
pub struct EulerTable {
    ends: (f64, f64),
    mu: Option<f64>,
}

impl EulerTable {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.check_sigma_flags()?;
        Ok(Self { ends: train_ends(cfg, cfg.use_dynamic_shifting)?, mu: None })
    }

    /// `Scheduler::set_mu`: refused where the config's shift is static, as diffusers ignores `mu` there.
    pub fn set_mu(&mut self, cfg: &SchedulerConfig, mu: f64) -> Result<()> {
        ensure!(cfg.use_dynamic_shifting, "mu applies only with use_dynamic_shifting (this config shifts statically)");
        ensure!(mu.is_finite(), "mu must be a finite number (got {mu})");
        self.mu = Some(mu);
        Ok(())
    }

    /// `set_timesteps(n, mu=…)`: (timesteps σ·T in float32, sigmas with the final 0).
    pub fn schedule(&self, cfg: &SchedulerConfig, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        // diffusers would space more steps than training timesteps; like the other samplers, refuse them
        check_steps(cfg, n)?;
        let mut sigmas = euler_sigmas(cfg, self.ends, n, self.mu)?;
        let t_train = cfg.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|s| (*s as f32 * t_train) as f64).collect();
        sigmas.push(0.0);
        Ok((timesteps, sigmas))
    }
}

/// `FlowMatchHeunDiscreteScheduler.set_timesteps(n)`'s sigmas: the Euler class's static-shift table without its
/// options (float32 values, without the final 0).
pub fn heun_sigmas(cfg: &SchedulerConfig, ends: (f64, f64), n: usize) -> Vec<f64> {
    let t_train = cfg.num_train_timesteps as f64;
    np_linspace(ends.0 * t_train, ends.1 * t_train, n)
        .into_iter()
        .map(|t| shifted(cfg.shift, t / t_train) as f32 as f64)
        .collect()
}

/// `DPMSolverMultistepScheduler.set_timesteps(n)` with `use_flow_sigmas`: σ = 1 − α for α spaced from 1 to 1/T over
/// `n + 1` points, shifted by `flow_shift`, noisiest first, the σ = 0 end dropped; the timesteps are σ·T truncated
/// to integers (diffusers casts them to int64). Returns (timesteps, float64 sigmas); the caller appends the final
/// sigma and rounds to float32.
pub fn dpm_flow_sigmas(cfg: &SchedulerConfig, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure!(
        cfg.flow_shift.is_finite() && cfg.flow_shift > 0.0,
        "flow_shift must be a finite number > 0 (got {})",
        cfg.flow_shift
    );
    let t_train = cfg.num_train_timesteps as f64;
    let mut sigmas: Vec<f64> =
        np_linspace(1.0, 1.0 / t_train, n + 1).into_iter().map(|a| shifted(cfg.flow_shift, 1.0 - a)).collect();
    sigmas.reverse();
    sigmas.pop();
    let timesteps = sigmas.iter().map(|s| (s * t_train).trunc()).collect();
    Ok((timesteps, sigmas))
}
