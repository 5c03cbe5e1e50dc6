//! ResNet block and the 2× down/up samplers of the UNet (diffusers `models/resnet.py`:
//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`).

use crate::nn::{Activation, Conv2d, GroupNorm, Linear};
use anyhow::Result;
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// GroupNorm → act → conv, plus the projected time embedding, → GroupNorm → act → conv, with a 1×1
/// `conv_shortcut` on the residual when the channel count changes.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    /// `resnet_time_scale_shift = "scale_shift"`: the time embedding gives a scale and a shift applied after norm2.
    scale_shift: bool,
    output_scale_factor: f64,
}

/// Shared settings of every ResNet block in one UNet.
#[derive(Clone, Copy, Debug)]
pub struct ResnetOpts {
    pub temb: i64,
    pub groups: i64,
    pub eps: f64,
    pub act: Activation,
    pub scale_shift: bool,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64, o: &ResnetOpts) -> Result<Self> {
        let temb_out = if o.scale_shift { 2 * out_ch } else { out_ch };
        Ok(Self {
            norm1: GroupNorm::new(&(vb / "norm1"), o.groups, in_ch, o.eps)?,
            conv1: Conv2d::new(&(vb / "conv1"), in_ch, out_ch, 3, 1, 1, true)?,
            time_emb_proj: Linear::new(&(vb / "time_emb_proj"), o.temb, temb_out, true)?,
            norm2: GroupNorm::new(&(vb / "norm2"), o.groups, out_ch, o.eps)?,
            conv2: Conv2d::new(&(vb / "conv2"), out_ch, out_ch, 3, 1, 1, true)?,
            conv_shortcut: if in_ch != out_ch {
                Some(Conv2d::new(&(vb / "conv_shortcut"), in_ch, out_ch, 1, 1, 0, true)?)
            } else {
                None
            },
            act: o.act,
            scale_shift: o.scale_shift,
            output_scale_factor: o.output_scale_factor,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.act.forward(&self.norm1.forward(x)));
        let t = self.time_emb_proj.forward(&self.act.forward(temb)).unsqueeze(-1).unsqueeze(-1);
        let h = if self.scale_shift {
            let parts = t.f_chunk(2, 1)?;
            self.norm2.forward(&h) * (parts[0].shallow_clone() + 1.0) + &parts[1]
        } else {
            self.norm2.forward(&(h + t))
        };
        let h = self.conv2.forward(&self.act.forward(&h));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x.shallow_clone(),
        };
        let out = skip + h;
        Ok(if self.output_scale_factor != 1.0 { out / self.output_scale_factor } else { out })
    }
}

/// Stride-2 3×3 conv (`downsamplers.0.conv`). With `downsample_padding = 0`, diffusers pads only right/bottom.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_asymmetric: bool,
}

impl Downsample2D {
    pub fn new(vb: &VarBuilder, channels: i64, padding: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&(vb / "conv"), channels, channels, 3, 2, padding, true)?,
            pad_asymmetric: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.pad_asymmetric {
            self.conv.forward(&x.f_constant_pad_nd([0, 1, 0, 1])?)
        } else {
            self.conv.forward(x)
        })
    }
}

/// Nearest-neighbour upsampling to the size of the matching skip connection (2× when the input size is a
/// multiple of the UNet's total downscale, otherwise the size diffusers forwards as `upsample_size`), then 3×3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(&(vb / "conv"), channels, channels, 3, 1, 1, true)? })
    }

    pub fn forward(&self, x: &Tensor, size: [i64; 2]) -> Result<Tensor> {
        Ok(self.conv.forward(&x.f_upsample_nearest2d(size, None, None)?))
    }
}
