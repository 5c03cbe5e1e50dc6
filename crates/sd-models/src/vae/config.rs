//! `vae/config.json` of a diffusers `AutoencoderKL`, field for field, with diffusers' defaults.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// diffusers `AutoencoderKL` configuration (`models/autoencoders/autoencoder_kl.py`). Unknown fields are ignored.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub act_fn: String,
    pub latent_channels: i64,
    pub norm_num_groups: i64,
    /// Image size the VAE was trained at; diffusers also takes it as the default tile size.
    /// Some configs store `[h, w]`: the first entry is used, as diffusers does.
    #[serde(deserialize_with = "size_or_pair")]
    pub sample_size: i64,
    /// Latents fed to the UNet are `(z - shift_factor) * scaling_factor`.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// The VAE overflows in f16 (SD1/SDXL): the pipeline decodes in f32 when this is set.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

fn size_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(i64),
        Many(Vec<i64>),
    }
    match Size::deserialize(d)? {
        Size::One(v) => Ok(v),
        Size::Many(v) => v.first().copied().ok_or_else(|| serde::de::Error::custom("sample_size is an empty list")),
    }
}

impl VaeConfig {
    /// Read and check `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read VAE config {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid AutoencoderKL config", path.display()))?;
        cfg.validate().with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// Reject configurations this implementation cannot build, naming the field.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            bail!("`block_out_channels` is empty");
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "`down_block_types` ({}) and `up_block_types` ({}) must have as many entries as `block_out_channels` ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
        }
        if let Some(t) = self.down_block_types.iter().find(|t| t.as_str() != "DownEncoderBlock2D") {
            bail!("`down_block_types` entry `{t}` is not supported (only DownEncoderBlock2D)");
        }
        if let Some(t) = self.up_block_types.iter().find(|t| t.as_str() != "UpDecoderBlock2D") {
            bail!("`up_block_types` entry `{t}` is not supported (only UpDecoderBlock2D)");
        }
        if self.norm_num_groups <= 0 {
            bail!("`norm_num_groups` must be positive, found {}", self.norm_num_groups);
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c <= 0 || c % self.norm_num_groups != 0) {
            bail!(
                "`block_out_channels` entry {c} is not a positive multiple of `norm_num_groups` {}",
                self.norm_num_groups
            );
        }
        if self.latent_channels <= 0 || self.in_channels <= 0 || self.out_channels <= 0 {
            bail!("`latent_channels`, `in_channels` and `out_channels` must be positive");
        }
        if self.layers_per_block <= 0 {
            bail!("`layers_per_block` must be positive, found {}", self.layers_per_block);
        }
        crate::nn::Activation::parse(&self.act_fn).context("in `act_fn`")?;
        Ok(())
    }

    /// Pixels per latent pixel along each side: 2^(len(block_out_channels) - 1).
    pub fn scale_factor(&self) -> i64 {
        1i64 << (self.block_out_channels.len().saturating_sub(1))
    }
}
