//! [`TrainConfig`]: every setting of a training run, validated before any model is loaded.

use crate::lr::LrSchedule;
use crate::optim::AdamWConfig;
use anyhow::{bail, Result};
use std::path::PathBuf;
use tch::{Device, Kind};

#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Base diffusers folder: text encoder, tokenizer, VAE, scheduler (and the UNet, unless `unet_config`).
    pub model: PathBuf,
    /// Train a freshly initialised UNet from this `config.json` instead of fine-tuning the base model's.
    pub unet_config: Option<PathBuf>,
    /// Where the final diffusers folder, `checkpoint-N/` folders, samples and the loss log go.
    pub output: PathBuf,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Optimizer steps in total (a resumed run continues up to this number).
    pub max_steps: u64,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: u64,
    pub adam: AdamWConfig,
    /// `clip_grad_norm_` max norm; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    pub snr_gamma: Option<f64>,
    /// With `snr_gamma`: the v-prediction form that keeps high-noise steps at full weight ([`crate::loss::MinSnr`]).
    pub snr_keep_high_noise: bool,
    /// Probability that a training caption is replaced by the empty prompt (classifier-free guidance needs the
    /// model to have learned the unconditional prediction too). 0 draws nothing, keeping older runs' streams.
    pub caption_dropout: f64,
    pub ema_decay: Option<f64>,
    /// UNet (and trained text encoder) dtype; float32 master weights are kept for reduced precisions.
    pub dtype: Kind,
    pub device: Device,
    pub seed: u64,
    pub train_text_encoder: bool,
    pub checkpoint_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub sample_prompts: Vec<String>,
    pub sample_steps: usize,
    pub resume: Option<PathBuf>,
    /// The `license:` of the model card; `None` = the base model card's, else `unknown`.
    pub license: Option<String>,
}

impl TrainConfig {
    /// Defaults of diffusers' `train_text_to_image.py` where it has one (lr 1e-4, AdamW defaults, max norm 1).
    pub fn new(model: PathBuf, output: PathBuf) -> Self {
        Self {
            model,
            unet_config: None,
            output,
            batch_size: 1,
            grad_accum: 1,
            max_steps: 100,
            lr: 1e-4,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            snr_gamma: None,
            snr_keep_high_noise: false,
            caption_dropout: 0.0,
            ema_decay: None,
            dtype: Kind::Float,
            device: Device::Cpu,
            seed: 0,
            train_text_encoder: false,
            checkpoint_every: None,
            sample_every: None,
            sample_prompts: Vec::new(),
            sample_steps: 20,
            resume: None,
            license: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.grad_accum == 0 {
            bail!("--grad-accum must be at least 1");
        }
        if self.max_steps == 0 {
            bail!("--steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                bail!("--max-grad-norm must be positive, got {n}");
            }
        }
        if let Some(g) = self.snr_gamma {
            if !(g.is_finite() && g > 0.0) {
                bail!("--snr-gamma must be positive, got {g}");
            }
        }
        if !(0.0..=1.0).contains(&self.caption_dropout) {
            bail!("--caption-dropout must be between 0 and 1, got {}", self.caption_dropout);
        }
        if !matches!(self.dtype, Kind::Float | Kind::BFloat16) {
            bail!("training supports --dtype f32 or bf16 (f16 training needs loss scaling, which is not implemented)");
        }
        if self.checkpoint_every == Some(0) || self.sample_every == Some(0) {
            bail!("--checkpoint-every and --sample-every must be at least 1");
        }
        if self.sample_every.is_some() && self.sample_prompts.is_empty() {
            bail!("--sample-every needs at least one --sample-prompt");
        }
        Ok(())
    }
}
