//! Timestep/sigma schedule shared by the DPM-Solver family (DPMSolverMultistep, DPMSolverSinglestep, DEIS, UniPC):
//! integer timesteps spaced over `n + 1` points (the last dropped), sigmas interpolated or Karras / exponential /
//! beta re-spaced over the whole training range.

use crate::config::{BetaSchedule, FinalSigmas, SchedulerConfig, TimestepSpacing};
use crate::ksched::respace;
use crate::schedule::{np_arange, np_linspace, np_round, TrainSchedule};
use crate::sigmas::{interp_index, sigma_to_t};
use anyhow::Result;

#[derive(Debug, Clone, Default)]
pub struct DpmSchedule {
    pub timesteps: Vec<f64>,
    /// float32 values, one longer than `timesteps` (the final sigma).
    pub sigmas: Vec<f64>,
}

/// `(alpha_t, sigma_t)` of the VP process at Karras sigma `sigma`.
pub fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

/// log-SNR λ = log α − log σ.
pub fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

pub fn final_sigma(cfg: &SchedulerConfig, train: &TrainSchedule) -> f64 {
    crate::ksched::final_sigma(cfg, train)
}

/// Last usable training timestep given `lambda_min_clipped` (searchsorted over the flipped λ table).
fn last_timestep(cfg: &SchedulerConfig, train: &TrainSchedule) -> usize {
    let n = cfg.num_train_timesteps;
    match cfg.lambda_min_clipped {
        None => n,
        Some(min) => {
            let clipped = train
                .alphas_cumprod
                .iter()
                .rev()
                .filter(|&&ac| {
                    let ac = ac as f32;
                    let l = ac.sqrt().ln() - (1.0 - ac).sqrt().ln();
                    (l as f64) < min
                })
                .count();
            n - clipped
        }
    }
}

/// Where the classes of this family differ in `set_timesteps`.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    /// Honour `lambda_min_clipped` (DPM-Solver classes).
    pub lambda_clip: bool,
    /// Karras/exponential/beta ends come from config `sigma_min`/`sigma_max` when set (UniPC).
    pub cfg_minmax: bool,
    /// With a re-spaced schedule, final_sigmas_type "sigma_min" means its last sigma (UniPC, DEIS).
    pub final_from_respaced: bool,
    /// Karras timesteps are rounded even for squaredcos_cap_v2 (UniPC, DEIS).
    pub always_round_karras: bool,
}

pub const DPM: Flavor =
    Flavor { lambda_clip: true, cfg_minmax: false, final_from_respaced: false, always_round_karras: false };

/// `set_timesteps(num_inference_steps)` of DPMSolverMultistepScheduler (and the others listed above).
pub fn spaced(cfg: &SchedulerConfig, train: &TrainSchedule, n: usize) -> Result<DpmSchedule> {
    spaced_as(cfg, train, n, DPM)
}

pub fn spaced_as(cfg: &SchedulerConfig, train: &TrainSchedule, n: usize, fl: Flavor) -> Result<DpmSchedule> {
    let last = if fl.lambda_clip { last_timestep(cfg, train) } else { cfg.num_train_timesteps };
    let timesteps: Vec<f64> = match cfg.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, last as f64 - 1.0, n + 1).into_iter().map(np_round).rev().collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (last / (n + 1)) as f64;
            let mut v: Vec<f64> = (0..=n).rev().map(|i| np_round(i as f64 * ratio)).collect();
            v.pop();
            v.into_iter().map(|t| t + cfg.steps_offset as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = cfg.num_train_timesteps as f64 / n as f64;
            np_arange(last as f64, 0.0, -ratio).into_iter().map(|t| np_round(t) - 1.0).collect()
        }
    };
    let full_desc: Vec<f64> = train.sigmas.iter().rev().cloned().collect();
    let minmax_cfg = if fl.cfg_minmax { cfg.clone() } else { no_minmax(cfg) };
    let mut respaced = false;
    let (timesteps, mut sigmas) = if let Some(s) = respace(&minmax_cfg, &full_desc, n) {
        respaced = true;
        let round =
            cfg.use_karras_sigmas && (fl.always_round_karras || cfg.beta_schedule != BetaSchedule::SquaredcosCapV2);
        let t = s
            .iter()
            .map(|&x| {
                let t = sigma_to_t(x, &train.log_sigmas);
                if round {
                    np_round(t)
                } else {
                    t.trunc()
                }
            })
            .collect();
        (t, s)
    } else {
        let s = timesteps.iter().map(|&t| interp_index(t, &train.sigmas)).collect();
        (timesteps, s)
    };
    let last_sigma = if respaced && fl.final_from_respaced && cfg.final_sigmas_type == FinalSigmas::SigmaMin {
        sigmas[sigmas.len() - 1]
    } else {
        final_sigma(cfg, train)
    };
    sigmas.push(last_sigma);
    Ok(DpmSchedule { timesteps, sigmas: sigmas.into_iter().map(|x| x as f32 as f64).collect() })
}

/// The DPM family has no `sigma_min`/`sigma_max` config: the Karras ends are always the training range's.
fn no_minmax(cfg: &SchedulerConfig) -> SchedulerConfig {
    let mut c = cfg.clone();
    c.sigma_min = None;
    c.sigma_max = None;
    c
}

/// `set_timesteps(timesteps=[...])`: integer timesteps given, sigmas interpolated.
pub fn custom(cfg: &SchedulerConfig, train: &TrainSchedule, timesteps: &[f64]) -> Result<DpmSchedule> {
    anyhow::ensure!(!timesteps.is_empty(), "a custom timestep list must not be empty");
    cfg.check_custom_timesteps()?;
    let ts: Vec<f64> = timesteps.iter().map(|t| t.trunc()).collect();
    let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp_index(t, &train.sigmas)).collect();
    sigmas.push(final_sigma(cfg, train));
    Ok(DpmSchedule { timesteps: ts, sigmas: sigmas.into_iter().map(|x| x as f32 as f64).collect() })
}
