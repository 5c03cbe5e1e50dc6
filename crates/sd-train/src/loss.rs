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

/// Min-SNR-γ loss weighting (arXiv 2303.09556) in one of two forms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinSnr {
    pub gamma: f64,
    /// `false`: the paper's and diffusers' form, an x₀-loss weight of min(SNR, γ). `true` (v-prediction only): an
    /// x₀-loss weight of min(SNR + 1, γ + 1), i.e. the plain v-loss (weight 1) where SNR ≤ γ and (γ + 1)/(SNR + 1)
    /// above, the same fall-off with SNR as the paper's γ/(SNR + 1). The paper's form gives a step below γ the
    /// v-loss weight SNR/(SNR + 1), which vanishes towards a zero-terminal-SNR schedule's last step, where the layout
    /// a prompt names is decided; this form keeps those steps at full weight and still damps the low-noise steps
    /// whose conflicting gradients Min-SNR is about.
    pub keep_high_noise: bool,
}

/// The (differentiable) scalar loss of one batch; `min_snr` enables Min-SNR-γ weighting.
pub fn diffusion_loss(
    unet: &UNet2DConditionModel,
    sched: &NoiseSchedule,
    batch: &NoisedBatch,
    min_snr: Option<MinSnr>,
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
    let Some(min_snr) = min_snr else {
        return Ok(err.f_mean(Kind::Float)?);
    };
    let weights = min_snr_weights(sched, &batch.timesteps, min_snr)?;
    let dims: Vec<i64> = (1..err.dim() as i64).collect();
    let per_sample = err.f_mean_dim(dims.as_slice(), false, Kind::Float)?;
    Ok(per_sample.f_mul(&weights.f_to(device)?)?.f_mean(Kind::Float)?)
}

/// The per-sample loss weights of Min-SNR-γ for `timesteps` (see [`MinSnr`]).
pub fn min_snr_weights(sched: &NoiseSchedule, timesteps: &[i64], min_snr: MinSnr) -> Result<Tensor> {
    let MinSnr { gamma, keep_high_noise } = min_snr;
    if gamma.is_nan() || gamma <= 0.0 {
        bail!("--snr-gamma must be positive, got {gamma}");
    }
    let snr = sched.snr(timesteps)?;
    let clipped = snr.f_clamp_max(gamma)?;
    if keep_high_noise && sched.prediction != Prediction::VPrediction {
        bail!("Min-SNR that keeps high-noise steps at full weight is defined for v-prediction models only");
    }
    Ok(match sched.prediction {
        Prediction::Epsilon => clipped.f_div(&snr)?,
        Prediction::VPrediction if keep_high_noise => {
            let plus_one = snr.f_add_scalar(1.0)?;
            plus_one.f_clamp_max(gamma + 1.0)?.f_div(&plus_one)?
        }
        Prediction::VPrediction => clipped.f_div(&snr.f_add_scalar(1.0)?)?,
        Prediction::Sample => clipped,
        Prediction::FlowPrediction => {
            bail!("training flow-matching models (prediction_type flow_prediction) is not supported")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(prediction: &str) -> NoiseSchedule {
        NoiseSchedule::from_json(&serde_json::json!({
            "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": prediction, "rescale_betas_zero_snr": true
        }))
        .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
    }

    /// The high-noise-keeping form is the plain v-loss where SNR ≤ γ (weight 1, also at the zero-SNR last step,
    /// where the paper's form gives 0) and (γ + 1)/(SNR + 1) where SNR > γ (the paper's: γ/(SNR + 1)).
    #[test]
    fn keeping_high_noise_changes_only_the_steps_below_gamma() {
        let sched = schedule("v_prediction");
        let steps = [0i64, 10, 100, 400, 700, 999];
        let snr = values(&sched.snr(&steps).unwrap());
        assert_eq!(snr[5], 0.0, "zero terminal SNR");
        let gamma = 5.0;
        let paper = values(&min_snr_weights(&sched, &steps, MinSnr { gamma, keep_high_noise: false }).unwrap());
        let kept = values(&min_snr_weights(&sched, &steps, MinSnr { gamma, keep_high_noise: true }).unwrap());
        for i in 0..steps.len() {
            let want_paper = snr[i].min(gamma) / (snr[i] + 1.0);
            assert!((paper[i] - want_paper).abs() < 1e-6, "t={}: {} vs {want_paper}", steps[i], paper[i]);
            if snr[i] > gamma {
                let want = (gamma + 1.0) / (snr[i] + 1.0);
                assert!((kept[i] - want).abs() < 1e-6, "t={}: {} vs {want}", steps[i], kept[i]);
            } else {
                assert!((kept[i] - 1.0).abs() < 1e-6, "t={}: {}", steps[i], kept[i]);
            }
        }
        assert_eq!(paper[5], 0.0);
        assert!(min_snr_weights(&schedule("epsilon"), &steps, MinSnr { gamma, keep_high_noise: true }).is_err());
    }
}
