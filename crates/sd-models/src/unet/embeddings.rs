//! Timestep conditioning: the sinusoidal projection of the (possibly fractional) timestep and the MLP that turns
//! it into the embedding every ResNet block receives (diffusers `Timesteps` / `TimestepEmbedding`,
//! `models/embeddings.py`).

use crate::nn::{Activation, Linear};
use anyhow::{bail, Result};
use sd_core::weights::VarBuilder;
use tch::{Kind, Tensor};

/// Sinusoidal embedding of `timesteps` `[N]` into `[N, dim]`, computed in f32 with the same operation order as
/// diffusers' `get_timestep_embedding` (DDPM, arXiv 2006.11239 §3.2 / "Attention is all you need" §3.5):
/// frequency i = exp(-ln(10000)·i / (dim/2 − shift)); `[sin, cos]`, or `[cos, sin]` with `flip_sin_to_cos`.
pub fn timestep_embedding(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, shift: f64) -> Result<Tensor> {
    if timesteps.dim() != 1 {
        bail!("timesteps must be a 1-D tensor, got shape {:?}", timesteps.size());
    }
    let half = dim / 2;
    let device = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln()));
    let exponent = exponent / (half as f64 - shift);
    let freqs = exponent.exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    Ok(if dim % 2 == 1 { emb.f_constant_pad_nd([0, 1])? } else { emb })
}

/// diffusers `TimestepEmbedding`: linear_1 → act → linear_2 (→ optional post act), with an optional bias-free
/// `cond_proj` whose projection of an extra condition (LCM's guidance embedding) is added to the input first.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
    act: Activation,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    pub fn new(
        vb: &VarBuilder,
        in_dim: i64,
        out_dim: i64,
        act: Activation,
        post_act: Option<Activation>,
        cond_proj_dim: Option<i64>,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(&(vb / "linear_1"), in_dim, out_dim, true)?,
            linear_2: Linear::new(&(vb / "linear_2"), out_dim, out_dim, true)?,
            cond_proj: match cond_proj_dim {
                Some(d) => Some(Linear::new(&(vb / "cond_proj"), d, in_dim, false)?),
                None => None,
            },
            act,
            post_act,
        })
    }

    pub fn forward(&self, x: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.cond_proj, condition) {
            (Some(p), Some(c)) => x + p.forward(&c.to_kind(x.kind())),
            (None, Some(_)) => {
                bail!("a timestep condition (timestep_cond) was given, but the UNet config has no `time_cond_proj_dim`")
            }
            _ => x.shallow_clone(),
        };
        let h = self.linear_2.forward(&self.act.forward(&self.linear_1.forward(&x)));
        Ok(match self.post_act {
            Some(a) => a.forward(&h),
            None => h,
        })
    }
}
