//! diffusers' `IPAdapterPlusImageProjection`, the perceiver resampler of IP-Adapter "plus": a fixed set of learned
//! query tokens (`latents`) attends, four blocks deep, to the image encoder's penultimate hidden state joined with
//! the queries themselves, then is projected to the cross-attention width.
//!
//! Sizes are read from the weights as diffusers reads them: `latents` `[1, queries, hidden]`, `proj_in`
//! `[hidden, embed]`, `proj_out` `[cross, hidden]`, and the head count as `to_q` rows / 64 (heads of 64 channels;
//! the attention's width may differ from `hidden`).

use crate::attention::{attention, AttentionMode};
use crate::nn::{Activation, LayerNorm, Linear};
use anyhow::{bail, Context, Result};
use sd_core::VarBuilder;
use tch::Tensor;

/// The blocks `IPAdapterPlusImageProjection` is built with (its `depth`, never changed by the converter).
pub const DEPTH: usize = 4;
/// Channels per head (`dim_head`).
pub const DIM_HEAD: i64 = 64;
/// Feed-forward expansion (`ffn_ratio`).
pub const FFN_RATIO: i64 = 4;

/// diffusers `Attention(query_dim=hidden, heads, dim_head=64, out_bias=False)`: bias-free projections, keys and
/// values from the joined sequence.
struct ResamplerAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl ResamplerAttention {
    fn new(vb: &VarBuilder, hidden: i64, heads: i64) -> Result<Self> {
        let inner = heads * DIM_HEAD;
        Ok(Self {
            to_q: Linear::new(&(vb / "to_q"), hidden, inner, false)?,
            to_k: Linear::new(&(vb / "to_k"), hidden, inner, false)?,
            to_v: Linear::new(&(vb / "to_v"), hidden, inner, false)?,
            to_out: Linear::new(&(vb / "to_out" / 0), inner, hidden, false)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.f_reshape([b, -1, self.heads, DIM_HEAD])?.transpose(1, 2)) };
        let q = split(self.to_q.forward(x))?;
        let k = split(self.to_k.forward(context))?;
        let v = split(self.to_v.forward(context))?;
        let out = attention(&q, &k, &v, None, false, AttentionMode::Sdpa)?;
        let out = out.transpose(1, 2).f_reshape([b, l, self.heads * DIM_HEAD])?;
        Ok(self.to_out.forward(&out))
    }
}

/// `IPAdapterPlusImageProjectionBlock`.
struct Block {
    ln0: LayerNorm,
    ln1: LayerNorm,
    attn: ResamplerAttention,
    ff_norm: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl Block {
    fn new(vb: &VarBuilder, hidden: i64, heads: i64) -> Result<Self> {
        let inner = hidden * FFN_RATIO;
        Ok(Self {
            ln0: LayerNorm::new(&(vb / "ln0"), hidden, 1e-5)?,
            ln1: LayerNorm::new(&(vb / "ln1"), hidden, 1e-5)?,
            attn: ResamplerAttention::new(&(vb / "attn"), hidden, heads)?,
            ff_norm: LayerNorm::new(&(vb / "ff" / 0), hidden, 1e-5)?,
            ff_in: Linear::new(&(vb / "ff" / 1 / "net" / 0 / "proj"), hidden, inner, false)?,
            ff_out: Linear::new(&(vb / "ff" / 1 / "net" / 2), inner, hidden, false)?,
        })
    }

    /// The queries read the image tokens and themselves (normalised separately), then a feed-forward step; both
    /// with residuals.
    fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let normed = self.ln1.forward(latents);
        let context = Tensor::f_cat(&[self.ln0.forward(x), normed.shallow_clone()], -2)?;
        let latents = self.attn.forward(&normed, &context)? + latents;
        let ff = self.ff_out.forward(&Activation::Gelu.forward(&self.ff_in.forward(&self.ff_norm.forward(&latents))));
        Ok(ff + latents)
    }
}

pub struct PlusImageProjection {
    latents: Tensor,
    proj_in: Linear,
    proj_out: Linear,
    norm_out: LayerNorm,
    layers: Vec<Block>,
    pub num_queries: i64,
    pub embed_dims: i64,
    pub cross_attention_dim: i64,
}

impl PlusImageProjection {
    pub fn new(vb: &VarBuilder) -> Result<Self> {
        let shape = |name: &str| vb.shape_of(name).with_context(|| format!("`{name}` is missing"));
        let lat = shape("latents")?;
        let [1, queries, hidden] = lat.as_slice() else {
            bail!("`latents` must have shape [1, queries, hidden], found {lat:?}");
        };
        let (queries, hidden) = (*queries, *hidden);
        let matrix = |name: &str| -> Result<(i64, i64)> {
            match shape(name)?.as_slice() {
                [r, c] => Ok((*r, *c)),
                other => bail!("`{name}` must be a matrix, found shape {other:?}"),
            }
        };
        let (_, embed_dims) = matrix("proj_in.weight")?;
        let (cross, _) = matrix("proj_out.weight")?;
        let (q_rows, _) = matrix("layers.0.attn.to_q.weight")?;
        if q_rows % DIM_HEAD != 0 || q_rows == 0 {
            bail!("`layers.0.0.to_q.weight` has {q_rows} rows: expected heads of {DIM_HEAD} channels");
        }
        let heads = q_rows / DIM_HEAD;
        let layers = (0..DEPTH).map(|i| Block::new(&(vb / "layers" / i), hidden, heads)).collect::<Result<_>>()?;
        Ok(Self {
            latents: vb.get(&[1, queries, hidden], "latents")?,
            proj_in: Linear::new(&(vb / "proj_in"), embed_dims, hidden, true)?,
            proj_out: Linear::new(&(vb / "proj_out"), hidden, cross, true)?,
            norm_out: LayerNorm::new(&(vb / "norm_out"), cross, 1e-5)?,
            layers,
            num_queries: queries,
            embed_dims,
            cross_attention_dim: cross,
        })
    }

    /// `hidden` `[B, tokens, embed]` (the encoder's penultimate layer) → `[B, queries, cross]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let b = hidden.size()[0];
        let mut latents = self.latents.f_repeat([b, 1, 1])?;
        let x = self.proj_in.forward(hidden);
        for block in &self.layers {
            latents = block.forward(&x, &latents)?;
        }
        Ok(self.norm_out.forward(&self.proj_out.forward(&latents)))
    }
}
