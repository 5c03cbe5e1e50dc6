//! Training noise schedule (betas → alphas_cumprod) and inference timestep spacing, computed the way diffusers does:
//! tensors diffusers builds with torch in float32 are built here with LibTorch in float32 (bit-identical), numpy
//! float64 steps are done in f64. Values diffusers stores as float32 are kept as f64 holding that float32 value.

use crate::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// The training schedule every sampler derives its tables from.
#[derive(Debug, Clone)]
pub struct TrainSchedule {
    /// `alphas_cumprod` (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// `((1 - ᾱ) / ᾱ) ** 0.5` in float32 (the Karras-style sigma of every training timestep, ascending in t).
    pub sigmas: Vec<f64>,
    /// `np.log(sigmas)` in float32.
    pub log_sigmas: Vec<f64>,
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.f_to_kind(Kind::Double)?)?)
}

/// Glide's cosine schedule (`betas_for_alpha_bar`, "squaredcos_cap_v2").
fn cosine_betas(n: usize) -> Vec<f32> {
    let abar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - abar(t2) / abar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Betas as diffusers' scheduler `__init__` makes them (float32).
pub fn betas(cfg: &SchedulerConfig) -> Result<Tensor> {
    let n = cfg.num_train_timesteps;
    ensure!(n >= 2, "scheduler config field `num_train_timesteps` is {n}; expected at least 2");
    let opts = (Kind::Float, Device::Cpu);
    let b = if let Some(tb) = &cfg.trained_betas {
        ensure!(
            tb.len() == n,
            "scheduler config `trained_betas` has {} values but num_train_timesteps is {n}",
            tb.len()
        );
        Tensor::from_slice(&tb.iter().map(|v| *v as f32).collect::<Vec<_>>())
    } else {
        match cfg.beta_schedule {
            BetaSchedule::Linear => Tensor::f_linspace(cfg.beta_start, cfg.beta_end, n as i64, opts)?,
            BetaSchedule::ScaledLinear => {
                Tensor::f_linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n as i64, opts)?
                    .f_pow_tensor_scalar(2)?
            }
            BetaSchedule::SquaredcosCapV2 => Tensor::from_slice(&cosine_betas(n)),
        }
    };
    if cfg.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&b)
    } else {
        Ok(b)
    }
}

/// Zero terminal SNR rescale (Lin et al. 2023, arXiv 2305.08891, Algorithm 1), in float32 like diffusers.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Result<Tensor> {
    let alphas = betas.f_neg()?.f_add_scalar(1.0)?;
    let abar_sqrt = alphas.f_cumprod(0, Kind::Float)?.f_sqrt()?;
    let n = abar_sqrt.size()[0];
    let first = abar_sqrt.f_get(0)?.copy();
    let last = abar_sqrt.f_get(n - 1)?.copy();
    let shifted = abar_sqrt.f_sub(&last)?;
    let scaled = shifted.f_mul(&first.f_div(&first.f_sub(&last)?)?)?;
    let abar = scaled.f_pow_tensor_scalar(2)?;
    let ratio = abar.f_slice(0, 1, n, 1)?.f_div(&abar.f_slice(0, 0, n - 1, 1)?)?;
    let alphas = Tensor::f_cat(&[abar.f_slice(0, 0, 1, 1)?, ratio], 0)?;
    Ok(alphas.f_neg()?.f_add_scalar(1.0)?)
}

impl TrainSchedule {
    /// The table for classes that, with `rescale_betas_zero_snr`, also nudge the last ᾱ from 0 to 2⁻²⁴ so the
    /// terminal sigma is finite (Euler, Euler a, DPM-Solver multistep, UniPC).
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Self::build(cfg, true)
    }

    /// The table for classes that keep ᾱ_T = 0 under zero-SNR rescaling (DDIM, DDPM, LCM, TCD).
    pub fn new_exact_zero_snr(cfg: &SchedulerConfig) -> Result<Self> {
        Self::build(cfg, false)
    }

    fn build(cfg: &SchedulerConfig, nudge_terminal: bool) -> Result<Self> {
        let b = betas(cfg)?;
        let alphas = b.f_neg()?.f_add_scalar(1.0)?;
        let ac = alphas.f_cumprod(0, Kind::Float)?;
        if cfg.rescale_betas_zero_snr && nudge_terminal {
            let n = ac.size()[0];
            let _ = ac.f_get(n - 1)?.f_fill_(2f64.powi(-24))?;
        }
        let one_minus = ac.f_neg()?.f_add_scalar(1.0)?;
        let sig = one_minus.f_div(&ac)?.f_pow_tensor_scalar(0.5)?;
        let log_sig = sig.f_log()?;
        Ok(Self { alphas_cumprod: to_vec(&ac)?, sigmas: to_vec(&sig)?, log_sigmas: to_vec(&log_sig)? })
    }

    /// `alphas_cumprod[t]` for an integer training timestep, with a clear error outside the table.
    pub fn alpha_cumprod(&self, t: i64) -> Result<f64> {
        alpha_at(&self.alphas_cumprod, t)
    }
}

/// `alphas_cumprod[t]` of a table, with a clear error outside it.
pub fn alpha_at(alphas_cumprod: &[f64], t: i64) -> Result<f64> {
    ensure!(t >= 0 && (t as usize) < alphas_cumprod.len(), "timestep {t} is outside 0..{}", alphas_cumprod.len());
    Ok(alphas_cumprod[t as usize])
}

/// `np.round`: round half to even.
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(start, stop, num)` in float64.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let step = (stop - start) / div;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for float arguments (length `ceil((stop - start) / step)`).
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// The spacing used by Euler-family schedulers (float32 timesteps, descending), `timestep_spacing` +
/// `steps_offset` as in e.g. `EulerDiscreteScheduler.set_timesteps`.
pub fn spaced_timesteps_f32(cfg: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
    let f32r = |x: f64| x as f32 as f64;
    Ok(match cfg.timestep_spacing {
        // not rounded, unlike the integer spacing below
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (cfg.num_train_timesteps - 1) as f64, n).into_iter().rev().map(f32r).collect()
        }
        TimestepSpacing::Leading | TimestepSpacing::Trailing => {
            spaced_timesteps_int(cfg, n)?.into_iter().map(f32r).collect()
        }
    })
}

/// The spacing used by DDIM/DDPM/PNDM-style schedulers (integer timesteps, descending).
pub fn spaced_timesteps_int(cfg: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
    let train = cfg.num_train_timesteps;
    Ok(match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n).into_iter().rev().map(np_round).collect(),
        TimestepSpacing::Leading => {
            let ratio = (train / n) as f64;
            (0..n).rev().map(|i| np_round(i as f64 * ratio) + cfg.steps_offset as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            np_arange(train as f64, 0.0, -ratio).into_iter().map(|t| np_round(t) - 1.0).collect()
        }
    })
}

/// The checks every `set_timesteps` starts with.
pub fn check_steps(cfg: &SchedulerConfig, n: usize) -> Result<()> {
    ensure!(n > 0, "number of inference steps must be at least 1 (got 0)");
    ensure!(
        n <= cfg.num_train_timesteps,
        "number of inference steps ({n}) cannot exceed the model's num_train_timesteps ({})",
        cfg.num_train_timesteps
    );
    Ok(())
}
