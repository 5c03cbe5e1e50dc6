//! The VAE's block types (diffusers `unet_2d_blocks.py`): `DownEncoderBlock2D`, `UpDecoderBlock2D` and
//! `UNetMidBlock2D` without time embedding.

use super::attention::VaeAttention;
use super::resnet::{Downsample, ResnetBlock, Upsample};
use crate::nn::Activation;
use anyhow::Result;
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// `num_layers` resnets, then an optional stride-2 downsampler at `downsamplers.0`.
#[derive(Debug)]
pub struct DownEncoderBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Downsample>,
}

impl DownEncoderBlock {
    pub fn new(
        vb: &VarBuilder,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        groups: i64,
        act: Activation,
        down: bool,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| ResnetBlock::new(&(vb / "resnets" / i), if i == 0 { in_ch } else { out_ch }, out_ch, groups, act))
            .collect::<Result<_>>()?;
        let downsample = if down { Some(Downsample::new(&(vb / "downsamplers" / 0), out_ch)?) } else { None };
        Ok(Self { resnets, downsample })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for r in &self.resnets {
            h = r.forward(&h);
        }
        match &self.downsample {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

/// `num_layers` resnets, then an optional nearest-×2 upsampler at `upsamplers.0`.
#[derive(Debug)]
pub struct UpDecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Upsample>,
}

impl UpDecoderBlock {
    pub fn new(
        vb: &VarBuilder,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        groups: i64,
        act: Activation,
        up: bool,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| ResnetBlock::new(&(vb / "resnets" / i), if i == 0 { in_ch } else { out_ch }, out_ch, groups, act))
            .collect::<Result<_>>()?;
        let upsample = if up { Some(Upsample::new(&(vb / "upsamplers" / 0), out_ch)?) } else { None };
        Ok(Self { resnets, upsample })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for r in &self.resnets {
            h = r.forward(&h);
        }
        match &self.upsample {
            Some(u) => u.forward(&h),
            None => Ok(h),
        }
    }
}

/// resnet → (attention) → resnet, at the lowest resolution.
#[derive(Debug)]
pub struct MidBlock {
    resnet0: ResnetBlock,
    attention: Option<VaeAttention>,
    resnet1: ResnetBlock,
}

impl MidBlock {
    pub fn new(vb: &VarBuilder, channels: i64, groups: i64, act: Activation, add_attention: bool) -> Result<Self> {
        Ok(Self {
            resnet0: ResnetBlock::new(&(vb / "resnets" / 0), channels, channels, groups, act)?,
            attention: if add_attention {
                Some(VaeAttention::new(&(vb / "attentions" / 0), channels, groups)?)
            } else {
                None
            },
            resnet1: ResnetBlock::new(&(vb / "resnets" / 1), channels, channels, groups, act)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet0.forward(x);
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        Ok(self.resnet1.forward(&h))
    }
}
