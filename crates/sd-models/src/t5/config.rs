//! `text_encoder_3/config.json` (transformers `T5Config`), the fields the encoder reads.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Largest layer count accepted from a config (T5-XXL: 24).
pub const MAX_LAYERS: i64 = 128;
/// Largest model / feed-forward width accepted (T5-XXL: 4096 / 10240).
pub const MAX_WIDTH: i64 = 65536;
/// Largest vocabulary accepted (T5: 32128).
pub const MAX_VOCAB: i64 = 1 << 20;

#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub relative_attention_num_buckets: i64,
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
    /// "gated-gelu" (T5 v1.1, SD3's T5-XXL) or "relu" (original T5).
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    /// transformers' defaults.
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

/// The feed-forward variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// `T5DenseGatedActDense` with tanh GELU (`gelu_new`).
    GatedGelu,
    /// `T5DenseActDense` with ReLU.
    Relu,
}

impl T5Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn feed_forward(&self) -> Result<FeedForward> {
        Ok(match self.feed_forward_proj.as_str() {
            "gated-gelu" => FeedForward::GatedGelu,
            "relu" => FeedForward::Relu,
            other => {
                bail!("config field `feed_forward_proj` = \"{other}\" is not supported (supported: gated-gelu, relu)")
            }
        })
    }

    pub fn validate(&self) -> Result<()> {
        let check = |v: i64, name: &str, max: i64| -> Result<()> {
            ensure!(v >= 1 && v <= max, "config field `{name}` = {v} is outside 1..={max}");
            Ok(())
        };
        check(self.vocab_size, "vocab_size", MAX_VOCAB)?;
        check(self.d_model, "d_model", MAX_WIDTH)?;
        check(self.d_kv, "d_kv", MAX_WIDTH)?;
        check(self.d_ff, "d_ff", MAX_WIDTH)?;
        check(self.num_heads, "num_heads", 1024)?;
        check(self.num_heads * self.d_kv, "num_heads × d_kv", MAX_WIDTH)?;
        check(self.num_layers, "num_layers", MAX_LAYERS)?;
        check(self.relative_attention_num_buckets, "relative_attention_num_buckets", 4096)?;
        check(self.relative_attention_max_distance, "relative_attention_max_distance", 1 << 20)?;
        ensure!(
            self.relative_attention_num_buckets >= 4,
            "config field `relative_attention_num_buckets` must be at least 4"
        );
        self.feed_forward()?;
        Ok(())
    }
}
