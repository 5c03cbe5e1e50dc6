//! The VAE's residual block and resamplers (diffusers `models/resnet.py` `ResnetBlock2D` with `temb_channels=None`,
//! `downsampling.py` `Downsample2D`, `upsampling.py` `Upsample2D`). The VAE has no time embedding, so these are
//! kept apart from the UNet's versions.

use crate::nn::{Activation, Conv2d, GroupNorm};
use anyhow::{Context, Result};
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// GroupNorm eps of every VAE norm layer (diffusers passes `resnet_eps=1e-6`).
pub const VAE_EPS: f64 = 1e-6;

/// norm → act → conv → norm → act → conv, plus a (1×1-projected when channels change) skip.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock {
    pub fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64, groups: i64, act: Activation) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(&(vb / "norm1"), groups, in_ch, VAE_EPS)?,
            conv1: Conv2d::new(&(vb / "conv1"), in_ch, out_ch, 3, 1, 1, true)?,
            norm2: GroupNorm::new(&(vb / "norm2"), groups, out_ch, VAE_EPS)?,
            conv2: Conv2d::new(&(vb / "conv2"), out_ch, out_ch, 3, 1, 1, true)?,
            conv_shortcut: if in_ch != out_ch {
                Some(Conv2d::new(&(vb / "conv_shortcut"), in_ch, out_ch, 1, 1, 0, true)?)
            } else {
                None
            },
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.act.forward_owned(self.norm1.forward(x)));
        let h = self.conv2.forward(&self.act.forward_owned(self.norm2.forward(&h)));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x.shallow_clone(),
        };
        // in place into the fresh conv output when no gradient flows (one buffer fewer at the peak)
        if h.requires_grad() {
            skip + h
        } else {
            let mut h = h;
            drop(h.g_add_(&skip));
            h
        }
    }
}

/// Stride-2 3×3 conv after padding one zero row/column at the bottom/right (`Downsample2D`, `padding=0`).
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(&(vb / "conv"), channels, channels, 3, 2, 0, true)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = x.f_constant_pad_nd([0, 1, 0, 1]).context("downsample padding")?;
        Ok(self.conv.forward(&padded))
    }
}

/// Nearest-neighbour ×2 then a 3×3 conv (`Upsample2D` with `use_conv=True`).
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(&(vb / "conv"), channels, channels, 3, 1, 1, true)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.conv.forward(&upsample_nearest_2x(x)?))
    }
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")` on an NCHW tensor.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    x.f_upsample_nearest2d([h * 2, w * 2], 2.0, 2.0).context("nearest upsampling")
}
