//! `UNet2DConditionModel`, built entirely from its diffusers `config.json`: SD1.x, SD2.x (linear projections,
//! per-block heads, upcast attention), SDXL (text_time added conditioning, deep transformer stacks, attention-free
//! first level), inpainting (9 input channels) and LCM (`time_cond_proj_dim`) are all the same code.
//! Reference: diffusers 0.42.1 `models/unets/unet_2d_condition.py`.

mod blocks;
pub mod config;
pub mod embeddings;
pub mod encoder;
pub mod resnet;
pub mod split;
pub mod transformer;

pub use crate::attention::{AttentionHook, AttentionMode, AttentionSite};
pub use config::{PerBlock, UNetConfig};
pub use split::SplitPoint;

use crate::nn::{Activation, Conv2d, GroupNorm};
use anyhow::{bail, Context, Result};
use blocks::UpBlock;
use encoder::{activation, Encoded, UNetEncoder};
use sd_core::weights::VarBuilder;
use split::Route;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// SDXL's extra conditioning (`added_cond_kwargs`): pooled text embeddings `[B, pooled]` and the six size/crop
/// numbers `[B, 6]` (original size, crop top-left, target size).
#[derive(Debug)]
pub struct AddedCond {
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
}

/// What one evaluation passes to every block: how attention runs, and an optional hook into it.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub mode: AttentionMode,
    pub hook: Option<&'a dyn AttentionHook>,
}

/// Everything a UNet evaluation takes besides the sample, timestep and text states: diffusers' optional
/// `forward` arguments, with its names. All default to absent.
///
/// - ControlNet: `down_block_additional_residuals` (one per skip connection, added to the skips before the up
///   path) and `mid_block_additional_residual` (added to the mid block's output).
/// - T2I-Adapter: `down_intrablock_additional_residuals`, one per down level from the first, used as
///   `blocks::DownBlock::forward` describes.
/// - IP-Adapter and other attention processors: `attention_hook` (see [`AttentionHook`]).
#[derive(Clone, Copy, Default)]
pub struct UNetInputs<'a> {
    /// SDXL's pooled text embeddings and size ids.
    pub added: Option<&'a AddedCond>,
    /// LCM's guidance embedding `[B, time_cond_proj_dim]`.
    pub timestep_cond: Option<&'a Tensor>,
    pub down_block_additional_residuals: Option<&'a [Tensor]>,
    pub mid_block_additional_residual: Option<&'a Tensor>,
    pub down_intrablock_additional_residuals: Option<&'a [Tensor]>,
    pub attention_hook: Option<&'a dyn AttentionHook>,
}

/// `add_time_proj` + `add_embedding` of `addition_embed_type = "text_time"`.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    encoder: UNetEncoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
    mode: AttentionMode,
    /// Key/value widths of every transformer (must all equal the text states' width).
    cross_dims: Vec<i64>,
}

impl UNet2DConditionModel {
    /// Load a diffusers `unet/` folder (config.json + diffusion_pytorch_model.safetensors or its shards/variants).
    /// Missing, mis-shaped or unused tensors are all reported in one error.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        Self::load_with(dir, kind, device, false)
    }

    /// [`Self::load`], with the convolution weights channels-last when `channels_last` (see
    /// [`VarBuilder::with_channels_last`]); the output is contiguous either way.
    pub fn load_with(dir: &Path, kind: Kind, device: Device, channels_last: bool) -> Result<Self> {
        let cfg = UNetConfig::from_file(&dir.join("config.json"))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?
            .with_channels_last(channels_last)?
            .with_winograd(true)?;
        let model = Self::from_varbuilder(&vb, &cfg)?;
        vb.finish("UNet2DConditionModel", &[])?;
        Ok(model)
    }

    /// Build from any weight source (files, in-memory tensors, or `VarBuilder::from_init` for training).
    /// The caller is responsible for `vb.finish(..)`.
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let r = cfg.resolve()?;
        let act = activation("act_fn", &cfg.act_fn)?;
        let c0 = cfg.block_out_channels[0];
        let encoder = UNetEncoder::new(vb, cfg, &r, act)?;
        let n = r.down.len();
        let deepest = &r.down[n - 1];
        let mut cross_dims: Vec<i64> =
            r.down.iter().chain(&r.up).filter(|b| b.attention).map(|b| b.cross_attention_dim).collect();
        if r.mid {
            cross_dims.push(deepest.cross_attention_dim);
        }
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = deepest.channels;
        for (i, spec) in r.up.iter().enumerate() {
            let mirror = n - 1 - i;
            let skip_in = if mirror == 0 { c0 } else { r.down[mirror - 1].channels };
            up_blocks.push(UpBlock::new(&(vb / "up_blocks" / i), prev, skip_in, spec, i + 1 < n, &encoder.opts)?);
            prev = spec.channels;
        }
        let mut unet = Self {
            config: cfg.clone(),
            encoder,
            up_blocks,
            conv_norm_out: GroupNorm::new(&(vb / "conv_norm_out"), r.groups, c0, cfg.norm_eps)?,
            conv_out: Conv2d::new(
                &(vb / "conv_out"),
                c0,
                cfg.out_channels,
                cfg.conv_out_kernel,
                1,
                (cfg.conv_out_kernel - 1) / 2,
                true,
            )?,
            act,
            mode: AttentionMode::default(),
            cross_dims,
        };
        unet.number_attention_sites();
        Ok(unet)
    }

    /// Give every attention layer its position in diffusers' `attn_processors` order: down blocks, up blocks,
    /// then the mid block (the order in which `UNet2DConditionModel.__init__` registers them).
    fn number_attention_sites(&mut self) {
        let (down, mid) = self.encoder.attentions_mut();
        let up = self.up_blocks.iter_mut().flat_map(|b| b.attentions_mut());
        for (i, attn) in down.chain(up).chain(mid).enumerate() {
            attn.site.index = i;
        }
    }

    /// Every attention layer's site, in diffusers' `attn_processors` order.
    pub fn attention_sites(&mut self) -> Vec<AttentionSite> {
        let (down, mid) = self.encoder.attentions_mut();
        let up = self.up_blocks.iter_mut().flat_map(|b| b.attentions_mut());
        down.chain(up).chain(mid).map(|a| a.site.clone()).collect()
    }

    /// Number of skip connections the down path produces: the length `down_block_additional_residuals` must have.
    pub fn skip_count(&self) -> usize {
        1 + self.encoder.down_blocks.iter().map(|b| b.skip_count()).sum::<usize>()
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Whether the convolution and linear weights were packed for oneDNN at load ([`VarBuilder::packs_weights`]).
    pub fn has_packed_weights(&self) -> bool {
        self.encoder.conv_in.is_packed()
    }

    /// Choose how attention is evaluated from now on (all modes give the same result; see [`AttentionMode`]).
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.mode = mode;
    }

    pub fn attention_mode(&self) -> AttentionMode {
        self.mode
    }

    /// Predict noise (or v / x0, per the model's training) for `sample` `[B, in_channels, H, W]` at `timestep`
    /// (a scalar, `[1]` or `[B]`, fractional allowed) given text states `[B, tokens, cross_attention_dim]`.
    /// `added` is required by SDXL-style (`text_time`) models; `timestep_cond` `[B, time_cond_proj_dim]` is LCM's
    /// guidance embedding. Inputs are cast to the model's dtype; the output is in the model's dtype.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let inputs = UNetInputs { added, timestep_cond, ..Default::default() };
        self.forward_with(sample, timestep, encoder_hidden_states, &inputs)
    }

    /// [`Self::forward`] with every optional input of [`UNetInputs`] (ControlNet and T2I-Adapter residuals,
    /// attention hooks).
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        inputs: &UNetInputs,
    ) -> Result<Tensor> {
        Ok(self.forward_routed(sample, timestep, encoder_hidden_states, inputs, Route::Full)?.0)
    }

    /// The evaluation behind [`Self::forward_with`] and the split passes of [`split`]: `route` says whether the
    /// whole stack runs (optionally handing back the hidden state at a [`SplitPoint`]) or only the shallow part
    /// around a given deep feature. Returns the output and the captured feature, if one was asked for.
    fn forward_routed(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        inputs: &UNetInputs,
        route: Route,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (added, timestep_cond) = (inputs.added, inputs.timestep_cond);
        let cfg = &self.config;
        let size = sample.size();
        if size.len() != 4 || size[1] != cfg.in_channels {
            bail!("UNet sample must be [batch, {}, height, width], got {size:?}", cfg.in_channels);
        }
        let batch = size[0];
        let kind = self.encoder.conv_in.weight.kind();
        let ctx_size = encoder_hidden_states.size();
        if ctx_size.len() != 3 || ctx_size[0] != batch || !self.cross_dims.iter().all(|&d| d == ctx_size[2]) {
            bail!(
                "encoder_hidden_states must be [batch {batch}, tokens, {}] for this UNet (cross_attention_dim), got {ctx_size:?}",
                self.cross_dims.first().copied().unwrap_or(0)
            );
        }
        if let (Some(c), Some(d)) = (timestep_cond, cfg.time_cond_proj_dim) {
            if c.size() != [batch, d] {
                bail!("timestep_cond must be [{batch}, {d}] (time_cond_proj_dim), got {:?}", c.size());
            }
        }
        let sample = sample.to_kind(kind);
        let timesteps = match timestep.numel() {
            1 => timestep.reshape([1]).expand([batch], false),
            n if n as i64 == batch && timestep.dim() == 1 => timestep.shallow_clone(),
            _ => bail!(
                "timestep must be a scalar or have one value per batch item ({batch}), got shape {:?}",
                timestep.size()
            ),
        };
        let sample = if cfg.center_input_sample { sample * 2.0 - 1.0 } else { sample.shallow_clone() };

        let emb = self.encoder.embed(cfg, &timesteps.to_device(sample.device()), batch, kind, added, timestep_cond)?;
        let ctx = &encoder_hidden_states.to_kind(kind);
        let pass = Pass { mode: self.mode, hook: inputs.attention_hook };
        if let Route::Reuse(at, deep) = route {
            let out = self.shallow_pass(&sample, &emb, ctx, &pass, at, deep)?;
            return Ok((out, None));
        }
        let Encoded { mut h, mut skips, emb } =
            self.encoder.forward(&sample, emb, ctx, &pass, None, inputs.down_intrablock_additional_residuals)?;
        if let Some(extra) = inputs.down_block_additional_residuals {
            if extra.len() != skips.len() {
                bail!(
                    "down_block_additional_residuals has {} tensors but this UNet has {} skip connections",
                    extra.len(),
                    skips.len()
                );
            }
            for (i, (skip, r)) in skips.iter_mut().zip(extra).enumerate() {
                *skip = skip.f_add(r).with_context(|| {
                    format!("down_block_additional_residuals[{i}] {:?} does not fit skip {:?}", r.size(), skip.size())
                })?;
            }
        }
        if let Some(r) = inputs.mid_block_additional_residual {
            h = h.f_add(r).with_context(|| {
                format!("mid_block_additional_residual {:?} does not fit the mid block output {:?}", r.size(), h.size())
            })?;
        }
        let mut captured = None;
        for (i, block) in self.up_blocks.iter().enumerate() {
            h = match route {
                Route::Capture(at) if at.up_block == i => {
                    let ctx_err = || format!("UNet up block {i}");
                    let before = block.forward_layers(&h, 0..at.layer, &emb, ctx, &pass, &mut skips);
                    let before = before.with_context(ctx_err)?;
                    captured = Some(before.shallow_clone());
                    let rest = at.layer..block.layers();
                    block.forward_layers(&before, rest, &emb, ctx, &pass, &mut skips).with_context(ctx_err)?
                }
                _ => block.forward(&h, &emb, ctx, &pass, &mut skips).with_context(|| format!("UNet up block {i}"))?,
            };
        }
        Ok((self.finish(&h), captured))
    }

    /// `conv_norm_out`, the activation and `conv_out` on the last up block's output.
    fn finish(&self, h: &Tensor) -> Tensor {
        let h = self.act.forward(&self.conv_norm_out.forward(h));
        // Channels-last activations give a channels-last output; callers get the usual layout.
        self.conv_out.forward(&h).contiguous()
    }
}
