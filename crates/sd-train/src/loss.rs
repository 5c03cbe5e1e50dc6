//! The training objective of latent diffusion (Ho et al. 2020, arXiv 2006.11239; Rombach et al. 2022):
//!
//! 1. forward diffusion: pick a timestep t and noise ε, and make `x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε`
//!    (diffusers `DDPMScheduler.add_noise`);
//! 2. ask the UNet what it sees in `x_t` given the caption;
//! 3. score it with the mean squared error against ε (`epsilon` models) or against the velocity
//!    `v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0` (`v_prediction` models, Salimans & Ho 2022) or against `x_0` (`sample`).
//!
//! Optional Min-SNR-γ weighting (Hang et al. 2023, arXiv 2303.09556) as diffusers' `train_text_to_image.py`:
//! per-sample weight `min(SNR_t, γ) / SNR_t` for epsilon, `/ (SNR_t + 1)` for v-prediction, with
//! `SNR_t = ᾱ_t / (1 − ᾱ_t)`.

use anyhow::{bail, Context, Result};
use sd_models::unet::UNet2DConditionModel;
use sd_schedulers::schedule::TrainSchedule;
use sd_schedulers::{add_noise_batch, get_velocity, Prediction, SchedulerConfig};
use tch::{Kind, Tensor};

/// The noise schedule a model was trained with (its `scheduler_config.json`), as a training-time DDPM schedule.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub config: SchedulerConfig,
    pub prediction: Prediction,
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let prediction = config.prediction_type;
        let alphas_cumprod = TrainSchedule::new_exact_zero_snr(&config)?.alphas_cumprod;
        Ok(Self { config, prediction, alphas_cumprod })
    }

    /// From a model's saved scheduler config (any scheduler class: only the shared training fields are read).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let config: SchedulerConfig = serde_json::from_value(value.clone())
            .context("the scheduler config is not a valid diffusers scheduler config")?;
        Self::new(config)
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `compute_snr` of diffusers' training utils, in float32: `(sqrt(ᾱ) / sqrt(1 − ᾱ))²` per timestep.
    pub fn snr(&self, timesteps: &[i64]) -> Result<Tensor> {
        let mut ac = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            match self.alphas_cumprod.get(t as usize) {
                Some(&a) if t >= 0 => ac.push(a as f32),
                _ => bail!("timestep {t} is outside 0..{}", self.alphas_cumprod.len()),
            }
        }
        let ac = Tensor::from_slice(&ac);
        let alpha = ac.f_pow_tensor_scalar(0.5)?;
        let sigma = ac.f_neg()?.f_add_scalar(1.0)?.f_pow_tensor_scalar(0.5)?;
        Ok(alpha.f_div(&sigma)?.f_pow_tensor_scalar(2)?)
    }
}

/// One training batch with all its randomness already drawn.
pub struct NoisedBatch {
    /// Clean latents x_0 (already multiplied by the VAE scaling factor), `[B, C, h, w]`.
    pub latents: Tensor,
    /// Text encoder output, `[B, tokens, dim]`.
    pub encoder_hidden_states: Tensor,
    /// ε, same shape as `latents`.
    pub noise: Tensor,
    /// One integer timestep per sample, in `[0, num_train_timesteps)`.
    pub timesteps: Vec<i64>,
}

/// The (differentiable) scalar loss of one batch; `snr_gamma` enables Min-SNR-γ weighting.
pub fn diffusion_loss(
    unet: &UNet2DConditionModel,
    sched: &NoiseSchedule,
    batch: &NoisedBatch,
    snr_gamma: Option<f64>,
) -> Result<Tensor> {
    let b = batch.latents.size().first().copied().unwrap_or(0);
    if batch.timesteps.len() as i64 != b || batch.noise.size() != batch.latents.size() {
        bail!(
            "batch of {b} latents {:?} needs {b} timesteps and noise of the same shape (got {} timesteps, noise {:?})",
            batch.latents.size(),
            batch.timesteps.len(),
            batch.noise.size()
        );
    }
    let device = batch.latents.device();
    let t = Tensor::from_slice(&batch.timesteps).f_to(device)?;
    let noisy = add_noise_batch(&sched.config, &batch.latents, &batch.noise, &t)?;
    let target = match sched.prediction {
        Prediction::Epsilon => batch.noise.shallow_clone(),
        Prediction::VPrediction => get_velocity(&sched.config, &batch.latents, &batch.noise, &t)?,
        Prediction::Sample => batch.latents.shallow_clone(),
        Prediction::FlowPrediction => {
            bail!("training flow-matching models (prediction_type flow_prediction) is not supported")
        }
    };
    let pred = unet.forward(&noisy, &t, &batch.encoder_hidden_states, None, None)?;
    let err = pred.f_to_kind(Kind::Float)?.f_sub(&target.f_to_kind(Kind::Float)?)?.f_square()?;
    let Some(gamma) = snr_gamma else {
        return Ok(err.f_mean(Kind::Float)?);
    };
    if gamma.is_nan() || gamma <= 0.0 {
        bail!("--snr-gamma must be positive, got {gamma}");
    }
    let snr = sched.snr(&batch.timesteps)?;
    let clipped = snr.f_clamp_max(gamma)?;
    let weights = match sched.prediction {
        Prediction::Epsilon => clipped.f_div(&snr)?,
        Prediction::VPrediction => clipped.f_div(&snr.f_add_scalar(1.0)?)?,
        Prediction::Sample => clipped,
        Prediction::FlowPrediction => {
            bail!("training flow-matching models (prediction_type flow_prediction) is not supported")
        }
    };
    let dims: Vec<i64> = (1..err.dim() as i64).collect();
    let per_sample = err.f_mean_dim(dims.as_slice(), false, Kind::Float)?;
    Ok(per_sample.f_mul(&weights.f_to(device)?)?.f_mean(Kind::Float)?)
}
