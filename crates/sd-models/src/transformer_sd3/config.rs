//! `transformer/config.json` of an SD3 / SD3.5 pipeline (`SD3Transformer2DModel`), under diffusers' field names.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Largest layer count accepted from a config (SD3.5 Large has 38): bounds what an untrusted file can ask us to build.
pub const MAX_LAYERS: i64 = 128;
/// Largest width (heads × head dim) accepted (SD3.5 Large: 38 × 64 = 2432).
pub const MAX_INNER_DIM: i64 = 16384;
/// Largest positional-embedding grid side (SD3: 192 for Medium, 192 for Large).
pub const MAX_POS_EMBED_SIZE: i64 = 1024;

#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct SD3TransformerConfig {
    pub sample_size: i64,
    pub patch_size: i64,
    pub in_channels: i64,
    pub num_layers: i64,
    pub attention_head_dim: i64,
    pub num_attention_heads: i64,
    pub joint_attention_dim: i64,
    pub caption_projection_dim: i64,
    pub pooled_projection_dim: i64,
    pub out_channels: Option<i64>,
    pub pos_embed_max_size: Option<i64>,
    /// The blocks with a second, image-only attention (SD3.5 Medium's MMDiT-X: 0..=12).
    pub dual_attention_layers: Vec<i64>,
    /// `null` (SD3) or "rms_norm" (SD3.5).
    pub qk_norm: Option<String>,
}

impl Default for SD3TransformerConfig {
    /// diffusers' `__init__` defaults.
    fn default() -> Self {
        Self {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            num_layers: 18,
            attention_head_dim: 64,
            num_attention_heads: 18,
            joint_attention_dim: 4096,
            caption_projection_dim: 1152,
            pooled_projection_dim: 2048,
            out_channels: Some(16),
            pos_embed_max_size: Some(96),
            dual_attention_layers: vec![],
            qk_norm: None,
        }
    }
}

impl SD3TransformerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Every size checked before anything is allocated; options sd-rs does not implement are refused by name.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: i64, name: &str, max: i64| -> Result<()> {
            ensure!(v >= 1 && v <= max, "config field `{name}` = {v} is outside 1..={max}");
            Ok(())
        };
        pos(self.num_layers, "num_layers", MAX_LAYERS)?;
        pos(self.patch_size, "patch_size", 16)?;
        pos(self.in_channels, "in_channels", 256)?;
        pos(self.out_channels(), "out_channels", 256)?;
        pos(self.attention_head_dim, "attention_head_dim", 1024)?;
        pos(self.num_attention_heads, "num_attention_heads", 256)?;
        pos(self.inner_dim(), "num_attention_heads × attention_head_dim", MAX_INNER_DIM)?;
        pos(self.joint_attention_dim, "joint_attention_dim", 65536)?;
        pos(self.pooled_projection_dim, "pooled_projection_dim", 65536)?;
        ensure!(
            self.caption_projection_dim == self.inner_dim(),
            "config field `caption_projection_dim` = {} must equal num_attention_heads × attention_head_dim = {} \
             (the text and image streams attend jointly)",
            self.caption_projection_dim,
            self.inner_dim()
        );
        match self.pos_embed_max_size {
            Some(m) => pos(m, "pos_embed_max_size", MAX_POS_EMBED_SIZE)?,
            None => bail!(
                "config field `pos_embed_max_size` is null: sd-rs supports only SD3's cropped positional embedding"
            ),
        }
        for &i in &self.dual_attention_layers {
            ensure!(
                (0..self.num_layers).contains(&i),
                "config field `dual_attention_layers` names layer {i}, but the model has {} layers",
                self.num_layers
            );
        }
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => {}
            Some(other) => {
                bail!("config field `qk_norm` = \"{other}\" is not supported (supported: null, \"rms_norm\")")
            }
        }
        Ok(())
    }
}
