//! diffusers' `IPAdapterAttnProcessor2_0` as an [`AttentionHook`]: at every cross-attention layer, the layer's
//! queries attend to each adapter's image-prompt tokens through that adapter's `to_k_ip` / `to_v_ip`, and the
//! result, times the adapter's scale, is added to the text attention before `to_out`. Self-attention layers are
//! left alone; a scale of 0 skips the adapter, as diffusers does.

use super::IpAdapter;
use crate::attention::{attention, AttentionHook, AttentionMode, AttentionSite};
use anyhow::{bail, Result};
use tch::Tensor;

/// One adapter's contribution to a UNet evaluation.
pub struct IpAdapterUnit<'a> {
    pub adapter: &'a IpAdapter,
    /// `[batch, tokens, cross]`, one row per row of the UNet batch (the guidance halves included).
    pub tokens: Tensor,
    pub scale: f64,
}

/// Every adapter of a request, for [`crate::unet::UNetInputs::attention_hook`].
pub struct IpAdapterHook<'a> {
    pub units: Vec<IpAdapterUnit<'a>>,
}

impl AttentionHook for IpAdapterHook<'_> {
    fn after_attention(&self, site: &AttentionSite, q: &Tensor, out: Tensor, mode: AttentionMode) -> Result<Tensor> {
        if !site.cross {
            return Ok(out);
        }
        let (b, heads, d) = (q.size()[0], q.size()[1], q.size()[3]);
        let mut out = out;
        for unit in self.units.iter().filter(|u| u.scale != 0.0) {
            let (wk, wv) = unit.adapter.weights_at(site)?;
            if wk.size()[0] != heads * d {
                bail!(
                    "the IP-Adapter's to_k_ip at {} is {} wide but the layer's attention is {} wide",
                    site.path,
                    wk.size()[0],
                    heads * d
                );
            }
            if unit.tokens.size()[0] != b {
                bail!("IP-Adapter tokens for {} rows given to a UNet batch of {b}", unit.tokens.size()[0]);
            }
            let split = |w: &Tensor| -> Result<Tensor> {
                Ok(unit.tokens.f_linear::<&Tensor>(w, None)?.f_reshape([b, -1, heads, d])?.transpose(1, 2))
            };
            let ip = attention(q, &split(wk)?, &split(wv)?, None, false, mode)?;
            out = out.f_add(&ip.f_mul_scalar(unit.scale)?)?;
        }
        Ok(out)
    }
}
