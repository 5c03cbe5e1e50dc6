//! The two halves of `AutoencoderKL` (diffusers `models/autoencoders/vae.py` `Encoder` / `Decoder`).

use super::blocks::{DownEncoderBlock, MidBlock, UpDecoderBlock};
use super::config::VaeConfig;
use super::resnet::VAE_EPS;
use crate::nn::{Activation, Conv2d, GroupNorm};
use anyhow::Result;
use sd_core::weights::VarBuilder;
use tch::Tensor;

/// Image → 2·latent_channels moments (mean and log-variance, before `quant_conv`).
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Encoder {
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.act_fn)?;
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = *ch.last().unwrap_or(&0);
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut out_ch = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = c;
            let is_final = i + 1 == ch.len();
            down_blocks.push(DownEncoderBlock::new(
                &(vb / "down_blocks" / i),
                in_ch,
                out_ch,
                cfg.layers_per_block,
                groups,
                act,
                !is_final,
            )?);
        }
        Ok(Self {
            conv_in: Conv2d::new(&(vb / "conv_in"), cfg.in_channels, ch[0], 3, 1, 1, true)?,
            down_blocks,
            mid_block: MidBlock::new(&(vb / "mid_block"), last, groups, act, cfg.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::new(&(vb / "conv_norm_out"), groups, last, VAE_EPS)?,
            conv_out: Conv2d::new(&(vb / "conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1, true)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x);
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        h = self.mid_block.forward(&h)?;
        Ok(self.conv_out.forward(&self.act.forward_owned(self.conv_norm_out.forward(&h))))
    }
}

/// Latents (after `post_quant_conv`) → image.
#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Decoder {
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.act_fn)?;
        let groups = cfg.norm_num_groups;
        let reversed: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut out_ch = reversed[0];
        for (i, &c) in reversed.iter().enumerate() {
            let prev = out_ch;
            out_ch = c;
            let is_final = i + 1 == reversed.len();
            up_blocks.push(UpDecoderBlock::new(
                &(vb / "up_blocks" / i),
                prev,
                out_ch,
                cfg.layers_per_block + 1,
                groups,
                act,
                !is_final,
            )?);
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::new(&(vb / "conv_in"), cfg.latent_channels, reversed[0], 3, 1, 1, true)?,
            mid_block: MidBlock::new(&(vb / "mid_block"), reversed[0], groups, act, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&(vb / "conv_norm_out"), groups, first, VAE_EPS)?,
            conv_out: Conv2d::new(&(vb / "conv_out"), first, cfg.out_channels, 3, 1, 1, true)?,
            act,
        })
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z);
        h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        Ok(self.conv_out.forward(&self.act.forward_owned(self.conv_norm_out.forward(&h))))
    }
}
