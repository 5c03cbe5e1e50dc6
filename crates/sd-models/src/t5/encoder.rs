//! transformers' `T5EncoderModel`: token embedding (`shared`), `num_layers` pre-norm blocks of self-attention with
//! T5's bucketed relative position bias (computed by the first block, shared by all) and a (gated) feed-forward,
//! RMS layer norms without mean subtraction or bias, and a final norm. No attention scaling (T5 folds it into the
//! weights). Used as SD3's third text encoder (T5-XXL v1.1).

use super::config::{FeedForward, T5Config};
use crate::nn::{Embedding, Linear};
use anyhow::{ensure, Result};
use sd_core::weights::{Init, VarBuilder};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `T5LayerNorm`: x / √(mean(x²) + ε) · w, statistics in float32, the result in the weight's dtype when that is a
/// half type.
#[derive(Debug)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(vb: &VarBuilder, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get_with_init(&[dim], "weight", Init::Ones)?, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let var = x.f_to_kind(Kind::Float)?.f_square()?.f_mean_dim(&[-1i64][..], true, Kind::Float)?;
        let h = x.f_mul(&(var + self.eps).f_rsqrt()?)?;
        let wk = self.weight.kind();
        let h = if matches!(wk, Kind::Half | Kind::BFloat16) { h.f_to_kind(wk)? } else { h };
        Ok(self.weight.f_mul(&h)?)
    }
}

/// T5's bucket of a relative position (memory − query) for the bidirectional encoder: half the buckets per sign;
/// exact below `n/4`, logarithmic up to `max_distance`, the last bucket beyond.
pub fn relative_position_bucket(relative: i64, num_buckets: i64, max_distance: i64) -> i64 {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        // float32 as transformers computes it, truncated towards zero by `.to(torch.long)`
        let frac = ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln())
            * (half - max_exact) as f32;
        bucket += (max_exact + frac as i64).min(half - 1);
    }
    bucket
}

#[derive(Debug)]
struct Block {
    attn_norm: T5LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: T5LayerNorm,
    /// wi_0 (gated) or wi (plain).
    wi_0: Linear,
    /// wi_1, the linear gate (gated variant only).
    wi_1: Option<Linear>,
    wo: Linear,
}

#[derive(Debug)]
pub struct T5EncoderModel {
    pub config: T5Config,
    shared: Embedding,
    relative_attention_bias: Embedding,
    blocks: Vec<Block>,
    final_layer_norm: T5LayerNorm,
    ff: FeedForward,
}

impl T5EncoderModel {
    /// From a transformers `text_encoder_3/` folder (config.json + safetensors, sharded or not).
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg = T5Config::from_file(&dir.join("config.json"))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let model = Self::from_varbuilder(&vb, &cfg)?;
        // the tied copy of `shared` some files also carry
        vb.finish("T5EncoderModel", &["encoder.embed_tokens.weight"])?;
        Ok(model)
    }

    pub fn from_varbuilder(vb: &VarBuilder, cfg: &T5Config) -> Result<Self> {
        cfg.validate()?;
        let ff = cfg.feed_forward()?;
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let enc = vb / "encoder";
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let b = &enc / "block" / i / "layer";
            let (sa, fw) = (&b / 0, &b / 1);
            let att = &sa / "SelfAttention";
            let dense = &fw / "DenseReluDense";
            let (wi_0, wi_1) = match ff {
                FeedForward::GatedGelu => (
                    Linear::new(&(&dense / "wi_0"), d, cfg.d_ff, false)?,
                    Some(Linear::new(&(&dense / "wi_1"), d, cfg.d_ff, false)?),
                ),
                FeedForward::Relu => (Linear::new(&(&dense / "wi"), d, cfg.d_ff, false)?, None),
            };
            blocks.push(Block {
                attn_norm: T5LayerNorm::new(&(&sa / "layer_norm"), d, cfg.layer_norm_epsilon)?,
                q: Linear::new(&(&att / "q"), d, inner, false)?,
                k: Linear::new(&(&att / "k"), d, inner, false)?,
                v: Linear::new(&(&att / "v"), d, inner, false)?,
                o: Linear::new(&(&att / "o"), inner, d, false)?,
                ff_norm: T5LayerNorm::new(&(&fw / "layer_norm"), d, cfg.layer_norm_epsilon)?,
                wi_0,
                wi_1,
                wo: Linear::new(&(&dense / "wo"), cfg.d_ff, d, false)?,
            });
        }
        Ok(Self {
            config: cfg.clone(),
            shared: Embedding::new(&(vb / "shared"), cfg.vocab_size, d)?,
            relative_attention_bias: Embedding::new(
                &(&enc / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias"),
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
            )?,
            blocks,
            final_layer_norm: T5LayerNorm::new(&(&enc / "final_layer_norm"), d, cfg.layer_norm_epsilon)?,
            ff,
        })
    }

    /// The position bias `[1, heads, L, L]` in `kind`.
    fn position_bias(&self, len: i64, kind: Kind, device: Device) -> Result<Tensor> {
        let c = &self.config;
        let mut buckets = Vec::with_capacity((len * len) as usize);
        for q in 0..len {
            for m in 0..len {
                buckets.push(relative_position_bucket(
                    m - q,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                ));
            }
        }
        let ids = Tensor::from_slice(&buckets).f_view([len, len])?.f_to(device)?;
        Ok(self.relative_attention_bias.forward(&ids).f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_to_kind(kind)?)
    }

    /// float16 runs clamp to the largest finite value after each sub-layer, as transformers does.
    fn clamp_f16(x: Tensor) -> Result<Tensor> {
        if x.kind() != Kind::Half {
            return Ok(x);
        }
        let max = 65504.0;
        let inf = x.f_isinf()?.f_any()?.int64_value(&[]) != 0;
        let v = if inf { max - 1000.0 } else { max };
        Ok(x.f_clamp(-v, v)?)
    }

    /// `input_ids` `[B, L]` → last hidden state `[B, L, d_model]` (no attention mask, as SD3 runs it).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let s = input_ids.size();
        ensure!(s.len() == 2, "T5 input ids must be [batch, tokens], got {s:?}");
        let (b, l) = (s[0], s[1]);
        ensure!(b > 0 && l > 0, "T5 input ids must be non-empty, got shape {s:?}");
        ensure!(!input_ids.is_floating_point(), "T5 input ids must be integers, got {:?}", input_ids.kind());
        let (lo, hi) = (input_ids.f_min()?.int64_value(&[]), input_ids.f_max()?.int64_value(&[]));
        ensure!(
            lo >= 0 && hi < self.config.vocab_size,
            "T5 token ids in [{lo}, {hi}] are outside the model's vocabulary of {} (tokenizer and encoder differ?)",
            self.config.vocab_size
        );
        let input_ids = &input_ids.f_to_kind(Kind::Int64)?.f_to_device(self.shared.weight.device())?;
        let heads = self.config.num_heads;
        let mut h = self.shared.forward(input_ids);
        let bias = self.position_bias(l, h.kind(), h.device())?;
        for blk in &self.blocks {
            let n = blk.attn_norm.forward(&h)?;
            let split = |t: Tensor| -> Result<Tensor> { Ok(t.f_view([b, l, heads, -1])?.f_transpose(1, 2)?) };
            let (q, k, v) = (split(blk.q.forward(&n))?, split(blk.k.forward(&n))?, split(blk.v.forward(&n))?);
            let a = attention_with_bias(&q, &k, &v, &bias)?;
            let a = a.f_transpose(1, 2)?.f_reshape([b, l, -1])?;
            h = Self::clamp_f16(h.f_add(&blk.o.forward(&a))?)?;
            let n = blk.ff_norm.forward(&h)?;
            let x = match (&blk.wi_1, self.ff) {
                (Some(wi_1), FeedForward::GatedGelu) => {
                    blk.wi_0.forward(&n).f_gelu("tanh")?.f_mul(&wi_1.forward(&n))?
                }
                _ => blk.wi_0.forward(&n).f_relu()?,
            };
            let x = x.f_to_kind(blk.wo.weight.kind())?;
            h = Self::clamp_f16(h.f_add(&blk.wo.forward(&x))?)?;
        }
        self.final_layer_norm.forward(&h)
    }
}

/// softmax(q·kᵀ + bias)·v with no 1/√d scaling (T5's convention), through SDPA's additive mask.
fn attention_with_bias(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(q, k, v, Some(bias), 0.0, false, Some(1.0), false)?)
}
