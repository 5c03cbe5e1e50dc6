//! The VAE mid-block self-attention: GroupNorm, one head over all channels, residual
//! (diffusers `Attention(..., norm_num_groups, residual_connection=True, _from_deprecated_attn_block=True)` run by
//! `AttnProcessor2_0`).
//!
//! VAE folders saved before diffusers 0.14 name the projections `query`/`key`/`value`/`proj_attn` instead of
//! `to_q`/`to_k`/`to_v`/`to_out.0` (same `[C, C]` Linear shapes; diffusers renames them in
//! `ModelMixin::_fix_state_dict_keys_on_load`). Both load here, chosen per projection by which name the file has.

use super::resnet::VAE_EPS;
use crate::attention::AttentionMode;
use crate::nn::{GroupNorm, Linear};
use anyhow::{Context, Result};
use sd_core::weights::VarBuilder;
use tch::Tensor;

#[derive(Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

/// `modern` unless the file only has the `legacy` name (missing both: reported under the modern name).
fn projection(modern: VarBuilder, legacy: VarBuilder, channels: i64) -> Result<Linear> {
    let chosen = if !modern.contains("weight") && legacy.contains("weight") { legacy } else { modern };
    Linear::new(&chosen, channels, channels, true)
}

impl VaeAttention {
    pub fn new(vb: &VarBuilder, channels: i64, groups: i64) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(&(vb / "group_norm"), groups, channels, VAE_EPS)?,
            to_q: projection(vb / "to_q", vb / "query", channels)?,
            to_k: projection(vb / "to_k", vb / "key", channels)?,
            to_v: projection(vb / "to_v", vb / "value", channels)?,
            to_out: projection(vb / "to_out" / 0, vb / "proj_attn", channels)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.size4().context("VAE attention expects an NCHW tensor")?;
        let normed = self.group_norm.forward(x);
        // [B, C, H, W] → [B, 1 head, H·W, C]
        let seq = normed.view([b, c, h * w]).transpose(1, 2);
        let q = self.to_q.forward(&seq).unsqueeze(1);
        let k = self.to_k.forward(&seq).unsqueeze(1);
        let v = self.to_v.forward(&seq).unsqueeze(1);
        // `Auto`: LibTorch's SDPA except for bf16 on a CPU with AVX-512 BF16 and no AMX, where the fused kernel
        // takes 51 ms against SDPA's 188 ms for the 512 px decode's [1, 1, 4096, 512] call (`attention_call`, Zen 5).
        let attn = crate::attention::attention(&q, &k, &v, None, false, AttentionMode::Auto)
            .context("VAE mid-block attention")?;
        let out = self.to_out.forward(&attn.squeeze_dim(1));
        Ok(out.transpose(1, 2).reshape([b, c, h, w]) + x)
    }
}
