//! `config.json` of transformers' CLIP models, with transformers' field names and defaults (hub configs written
//! by old transformers versions omit fields equal to the defaults, so the defaults matter).

use crate::nn::Activation;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// transformers `CLIPTextConfig`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    /// 2 in configs older than transformers PR #24773 (all SD1/SD2 repos): pooling then takes the position of the
    /// largest id instead of the first `eos_token_id`.
    pub eos_token_id: Option<i64>,
    pub architectures: Option<Vec<String>>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
            architectures: None,
        }
    }
}

impl ClipTextConfig {
    /// Parse a text encoder's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_config(path)?;
        cfg.validate().with_context(|| format!("invalid text encoder config {}", path.display()))?;
        Ok(cfg)
    }

    /// The sizes CLIP-ViT-L/14's text tower (SD1's encoder) has.
    pub fn clip_vit_large() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_attention_heads: 12,
            eos_token_id: Some(2),
            ..Self::default()
        }
    }

    /// Check the sizes and the activation; returns the activation.
    pub fn validate(&self) -> Result<Activation> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("projection_dim", self.projection_dim),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                bail!("field `{name}` must be positive, found {v}");
            }
        }
        check_heads(self.hidden_size, self.num_attention_heads)?;
        parse_act(&self.hidden_act)
    }

    /// Whether `architectures` names the projection variant (SDXL's second encoder).
    pub fn declares_projection(&self) -> bool {
        self.architectures.iter().flatten().any(|a| a == "CLIPTextModelWithProjection")
    }
}

/// transformers `CLIPVisionConfig`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    pub fn validate(&self) -> Result<Activation> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ] {
            if v <= 0 {
                bail!("field `vision_config.{name}` must be positive, found {v}");
            }
        }
        if self.image_size % self.patch_size != 0 {
            bail!(
                "field `vision_config.image_size` ({}) is not a multiple of `vision_config.patch_size` ({})",
                self.image_size,
                self.patch_size
            );
        }
        check_heads(self.hidden_size, self.num_attention_heads)?;
        parse_act(&self.hidden_act).context("in `vision_config`")
    }

    /// Patches per image plus the class token.
    pub fn num_positions(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// transformers `CLIPConfig` as the safety checker saves it (only what the vision side needs).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipConfig {
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self { vision_config: ClipVisionConfig::default(), projection_dim: 512 }
    }
}

fn check_heads(hidden: i64, heads: i64) -> Result<()> {
    if hidden % heads != 0 {
        bail!("field `hidden_size` ({hidden}) is not divisible by `num_attention_heads` ({heads})");
    }
    Ok(())
}

fn parse_act(name: &str) -> Result<Activation> {
    match name {
        "quick_gelu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu" | "silu" => {
            Activation::parse(name).map_err(|e| anyhow!("field `hidden_act`: {e}"))
        }
        other => bail!("field `hidden_act` is `{other}`; CLIP encoders here support quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, silu"),
    }
}

pub(crate) fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{} is not a valid CLIP config: {e}", path.display()))
}
