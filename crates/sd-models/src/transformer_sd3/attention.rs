//! MMDiT joint attention (diffusers `Attention` with `JointAttnProcessor2_0`): image tokens and text tokens are
//! projected by their own q/k/v weights (`to_*` and `add_*_proj`), optionally RMS-normalised per head, attended
//! together as one sequence (image first), then split and projected back by `to_out.0` and `to_add_out`.
//! Without text tokens the same module is the plain self-attention of SD3.5's dual-attention blocks (`attn2`).

use super::norms::RmsNorm;
use crate::attention::{attention, AttentionMode};
use crate::nn::Linear;
use anyhow::{ensure, Result};
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// q/k/v projections of one stream, with its optional per-head RMS norms.
#[derive(Debug)]
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Qkv {
    /// `[B, L, D]` → q, k, v as `[B, H, L, d]`.
    fn project(&self, x: &Tensor, heads: i64) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.f_reshape([b, l, heads, -1])?.f_transpose(1, 2)?) };
        let mut q = split(self.q.forward(x))?;
        let mut k = split(self.k.forward(x))?;
        let v = split(self.v.forward(x))?;
        if let Some(n) = &self.norm_q {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.norm_k {
            k = n.forward(&k)?;
        }
        Ok((q, k, v))
    }
}

#[derive(Debug)]
pub struct JointAttention {
    image: Qkv,
    /// `add_q_proj` / `add_k_proj` / `add_v_proj` with `norm_added_q` / `norm_added_k` (absent for `attn2`).
    context: Option<Qkv>,
    to_out: Linear,
    /// Absent in the last block (`context_pre_only`), whose text output is discarded.
    to_add_out: Option<Linear>,
    heads: i64,
    pub mode: AttentionMode,
}

impl JointAttention {
    /// `joint`: has the text stream; `context_pre_only`: no text output projection; `rms`: `qk_norm` "rms_norm".
    pub fn new(
        vb: &VarBuilder,
        dim: i64,
        heads: i64,
        head_dim: i64,
        joint: bool,
        context_pre_only: bool,
        rms: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            Ok(if rms { Some(RmsNorm::new(&(vb / name), head_dim, 1e-6)?) } else { None })
        };
        let image = Qkv {
            q: Linear::new(&(vb / "to_q"), dim, inner, true)?,
            k: Linear::new(&(vb / "to_k"), dim, inner, true)?,
            v: Linear::new(&(vb / "to_v"), dim, inner, true)?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
        };
        let context = if joint {
            Some(Qkv {
                q: Linear::new(&(vb / "add_q_proj"), dim, inner, true)?,
                k: Linear::new(&(vb / "add_k_proj"), dim, inner, true)?,
                v: Linear::new(&(vb / "add_v_proj"), dim, inner, true)?,
                norm_q: norm("norm_added_q")?,
                norm_k: norm("norm_added_k")?,
            })
        } else {
            None
        };
        let to_add_out =
            if joint && !context_pre_only { Some(Linear::new(&(vb / "to_add_out"), inner, dim, true)?) } else { None };
        Ok(Self {
            image,
            context,
            to_out: Linear::new(&(vb / "to_out" / 0), inner, dim, true)?,
            to_add_out,
            heads,
            mode: AttentionMode::Sdpa,
        })
    }

    /// Image tokens `x` `[B, N, D]` and, for a joint layer, text tokens `c` `[B, S, D]` → (image out, text out);
    /// the text out is `None` for `attn2` and for the last block.
    pub fn forward(&self, x: &Tensor, c: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let (b, n) = (x.size()[0], x.size()[1]);
        let (mut q, mut k, mut v) = self.image.project(x, self.heads)?;
        if let (Some(ctx), Some(c)) = (&self.context, c) {
            let (cq, ck, cv) = ctx.project(c, self.heads)?;
            q = Tensor::f_cat(&[q, cq], 2)?;
            k = Tensor::f_cat(&[k, ck], 2)?;
            v = Tensor::f_cat(&[v, cv], 2)?;
        } else {
            ensure!(self.context.is_none(), "internal: a joint attention layer was called without text tokens");
        }
        let kind = q.kind();
        let out = attention(&q, &k, &v, None, false, self.mode)?;
        let total = out.size()[2];
        let out = out.f_transpose(1, 2)?.f_reshape([b, total, -1])?.f_to_kind(kind)?;
        let img = self.to_out.forward(&out.f_narrow(1, 0, n)?);
        let txt = match (&self.to_add_out, c) {
            (Some(p), Some(_)) => Some(p.forward(&out.f_narrow(1, n, total - n)?)),
            _ => None,
        };
        Ok((img, txt))
    }
}
