//! `JointTransformerBlock`: one MMDiT layer. Both streams are adaLN-Zero-modulated by the conditioning, attend
//! jointly, and go through their own gated feed-forward; SD3.5 Medium's dual-attention layers add an image-only
//! attention, and the last layer (`context_pre_only`) keeps only the image stream.

use super::attention::JointAttention;
use super::norms::{modulate, AdaLayerNormContinuous, AdaLayerNormZero};
use crate::attention::AttentionMode;
use crate::nn::{LayerNorm, Linear};
use anyhow::{bail, Result};
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// diffusers `FeedForward(dim, activation_fn="gelu-approximate")`: `net.0.proj` → tanh-GELU → `net.2`.
#[derive(Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: &VarBuilder, dim: i64) -> Result<Self> {
        Ok(Self {
            proj: Linear::new(&(vb / "net" / 0 / "proj"), dim, 4 * dim, true)?,
            out: Linear::new(&(vb / "net" / 2), 4 * dim, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.out.forward(&self.proj.forward(x).gelu("tanh"))
    }
}

/// How the text stream is normalised: adaLN-Zero with its own feed-forward, or (last block) only modulated.
#[derive(Debug)]
enum ContextPath {
    Full { norm1_context: AdaLayerNormZero, ff_context: FeedForward },
    PreOnly { norm1_context: AdaLayerNormContinuous },
}

#[derive(Debug)]
pub struct JointTransformerBlock {
    norm1: AdaLayerNormZero,
    context: ContextPath,
    attn: JointAttention,
    attn2: Option<JointAttention>,
    norm2: LayerNorm,
    ff: FeedForward,
}

impl JointTransformerBlock {
    pub fn new(
        vb: &VarBuilder,
        dim: i64,
        heads: i64,
        head_dim: i64,
        pre_only: bool,
        rms: bool,
        dual: bool,
    ) -> Result<Self> {
        let context = if pre_only {
            ContextPath::PreOnly { norm1_context: AdaLayerNormContinuous::new(&(vb / "norm1_context"), dim, dim)? }
        } else {
            ContextPath::Full {
                norm1_context: AdaLayerNormZero::new(&(vb / "norm1_context"), dim, false)?,
                ff_context: FeedForward::new(&(vb / "ff_context"), dim)?,
            }
        };
        Ok(Self {
            norm1: AdaLayerNormZero::new(&(vb / "norm1"), dim, dual)?,
            context,
            attn: JointAttention::new(&(vb / "attn"), dim, heads, head_dim, true, pre_only, rms)?,
            attn2: if dual {
                Some(JointAttention::new(&(vb / "attn2"), dim, heads, head_dim, false, false, rms)?)
            } else {
                None
            },
            norm2: LayerNorm::no_affine(dim, 1e-6),
            ff: FeedForward::new(&(vb / "ff"), dim)?,
        })
    }

    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.attn.mode = mode;
        if let Some(a) = self.attn2.as_mut() {
            a.mode = mode;
        }
    }

    /// (image `[B, N, D]`, text `[B, S, D]`, conditioning `[B, D]`) → (image, text; `None` after the last block).
    pub fn forward(&self, x: &Tensor, c: &Tensor, temb: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.norm1.forward(x, temb)?;
        let (c_normed, c_mod) = match &self.context {
            ContextPath::Full { norm1_context, .. } => {
                let m = norm1_context.forward(c, temb)?;
                (m.x.shallow_clone(), Some(m))
            }
            ContextPath::PreOnly { norm1_context } => (norm1_context.forward(c, temb)?, None),
        };
        let (attn_img, attn_txt) = self.attn.forward(&n.x, Some(&c_normed))?;
        let mut h = x + n.gate_msa.unsqueeze(1) * attn_img;
        match (&self.attn2, &n.x2) {
            (Some(a2), Some((x2, gate2))) => {
                let (o, _) = a2.forward(x2, None)?;
                h = h.f_add(&(gate2.unsqueeze(1) * o))?;
            }
            (None, None) => {}
            _ => bail!("internal: dual attention without its modulation"),
        }
        let ff_in = modulate(&self.norm2.forward(&h), &n.shift_mlp, &n.scale_mlp);
        let h = &h + n.gate_mlp.unsqueeze(1) * self.ff.forward(&ff_in);
        let c_out = match (&self.context, c_mod, attn_txt) {
            (ContextPath::Full { ff_context, .. }, Some(m), Some(t)) => {
                let c = c + m.gate_msa.unsqueeze(1) * t;
                let ff_in = modulate(&self.norm2.forward(&c), &m.shift_mlp, &m.scale_mlp);
                Some(&c + m.gate_mlp.unsqueeze(1) * ff_context.forward(&ff_in))
            }
            (ContextPath::PreOnly { .. }, None, None) => None,
            _ => bail!("internal: text stream of a joint block out of step"),
        };
        Ok((h, c_out))
    }
}
