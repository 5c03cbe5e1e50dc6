//! The normalisations of the MMDiT blocks (diffusers `models/normalization.py`): adaLN-Zero (`AdaLayerNormZero`,
//! and SD3.5's `SD35AdaLayerNormZeroX` with a second modulation for the dual attention), the final
//! `AdaLayerNormContinuous`, and `RMSNorm` (SD3.5's query/key norm).

use crate::nn::{LayerNorm, Linear};
use anyhow::Result;
use sd_core::weights::{Init, VarBuilder};
use tch::{Kind, Tensor};

/// x·(1 + scale) + shift with per-sample `[B, D]` modulation broadcast over the tokens of `[B, L, D]`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// The affine-free layer norm every adaptive norm here uses (eps 1e-6).
fn plain_norm(dim: i64) -> LayerNorm {
    LayerNorm::no_affine(dim, 1e-6)
}

/// What `AdaLayerNormZero` (and the X variant) hand the block: the modulated input and the gates/shifts/scales of
/// the rest of the block.
pub struct ZeroOut {
    pub x: Tensor,
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
    /// `SD35AdaLayerNormZeroX` only: the input modulated for the second attention, and its gate.
    pub x2: Option<(Tensor, Tensor)>,
}

/// `AdaLayerNormZero` (6 modulations) or `SD35AdaLayerNormZeroX` (9), from the conditioning embedding.
#[derive(Debug)]
pub struct AdaLayerNormZero {
    linear: Linear,
    norm: LayerNorm,
    chunks: i64,
}

impl AdaLayerNormZero {
    /// `dual`: the X variant (SD3.5 Medium's dual-attention blocks).
    pub fn new(vb: &VarBuilder, dim: i64, dual: bool) -> Result<Self> {
        let chunks = if dual { 9 } else { 6 };
        Ok(Self { linear: Linear::new(&(vb / "linear"), dim, chunks * dim, true)?, norm: plain_norm(dim), chunks })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<ZeroOut> {
        let m = self.linear.forward(&emb.silu()).f_chunk(self.chunks, 1)?;
        let normed = self.norm.forward(x);
        // diffusers' order: shift, scale, gate (attention), shift, scale, gate (MLP)[, shift, scale, gate (attn2)]
        Ok(ZeroOut {
            x: modulate(&normed, &m[0], &m[1]),
            gate_msa: m[2].shallow_clone(),
            shift_mlp: m[3].shallow_clone(),
            scale_mlp: m[4].shallow_clone(),
            gate_mlp: m[5].shallow_clone(),
            x2: (self.chunks == 9).then(|| (modulate(&normed, &m[6], &m[7]), m[8].shallow_clone())),
        })
    }
}

/// `AdaLayerNormContinuous` (layer norm, no affine, eps 1e-6): scale first, then shift, from the conditioning.
#[derive(Debug)]
pub struct AdaLayerNormContinuous {
    linear: Linear,
    norm: LayerNorm,
}

impl AdaLayerNormContinuous {
    pub fn new(vb: &VarBuilder, dim: i64, cond_dim: i64) -> Result<Self> {
        Ok(Self { linear: Linear::new(&(vb / "linear"), cond_dim, 2 * dim, true)?, norm: plain_norm(dim) })
    }

    pub fn forward(&self, x: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let m = self.linear.forward(&cond.silu().to_kind(x.kind())).f_chunk(2, 1)?;
        Ok(modulate(&self.norm.forward(x), &m[1], &m[0]))
    }
}

/// diffusers `RMSNorm` with a weight: statistics in float32; the result in the weight's dtype when that is a
/// half type, else float32 (as diffusers leaves it).
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vb: &VarBuilder, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get_with_init(&[dim], "weight", Init::Ones)?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let var = x.f_to_kind(Kind::Float)?.f_square()?.f_mean_dim(&[-1i64][..], true, Kind::Float)?;
        let h = x.f_mul(&(var + self.eps).f_rsqrt()?)?;
        let wk = self.weight.kind();
        let h = if matches!(wk, Kind::Half | Kind::BFloat16) { h.f_to_kind(wk)? } else { h };
        Ok(h.f_mul(&self.weight)?)
    }
}
