//! `config.json` of a diffusers `AutoencoderTiny` (TAESD); the defaults are the published TAESD architecture.

use crate::nn::Activation;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// diffusers `AutoencoderTiny` configuration (defaults = the published TAESD architecture).
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct TinyConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub encoder_block_out_channels: Vec<i64>,
    pub decoder_block_out_channels: Vec<i64>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: i64,
    pub upsampling_scaling_factor: i64,
    pub num_encoder_blocks: Vec<i64>,
    pub num_decoder_blocks: Vec<i64>,
    pub latent_magnitude: f64,
    pub latent_shift: f64,
    pub force_upcast: bool,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// diffusers' class name, checked so a KL VAE folder is not mistaken for a tiny one.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: Some(0.0),
            class_name: None,
        }
    }
}

impl TinyConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(c) = self.class_name.as_deref().filter(|c| *c != "AutoencoderTiny") {
            bail!("`_class_name` is `{c}`, not AutoencoderTiny (a full VAE folder? load it as AutoencoderKL)");
        }
        if self.encoder_block_out_channels.is_empty()
            || self.encoder_block_out_channels.len() != self.num_encoder_blocks.len()
        {
            bail!("`encoder_block_out_channels` and `num_encoder_blocks` must be non-empty and of equal length");
        }
        if self.decoder_block_out_channels.is_empty()
            || self.decoder_block_out_channels.len() != self.num_decoder_blocks.len()
        {
            bail!("`decoder_block_out_channels` and `num_decoder_blocks` must be non-empty and of equal length");
        }
        if self.upsample_fn != "nearest" {
            bail!("`upsample_fn` `{}` is not supported (only nearest)", self.upsample_fn);
        }
        if self.upsampling_scaling_factor <= 0 {
            bail!("`upsampling_scaling_factor` must be positive");
        }
        Activation::parse(&self.act_fn).context("in `act_fn`")?;
        Ok(())
    }
}
