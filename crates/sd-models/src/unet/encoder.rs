//! The contracting half of `UNet2DConditionModel`: `conv_in`, the time (and SDXL text-time) embedding, the down
//! blocks and the mid block. The UNet adds its up path to it; a ControlNet (`crate::controlnet`) is this same half
//! with zero convolutions on its outputs, so both are built from one piece with diffusers' state-dict names.

use super::blocks::{BlockOpts, DownBlock, MidBlock};
use super::config::{Resolved, UNetConfig};
use super::embeddings::{timestep_embedding, TimestepEmbedding};
use super::resnet::ResnetOpts;
use super::{AddedCond, Pass};
use crate::attention::Attention;
use crate::nn::{Activation, Conv2d};
use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use tch::{Kind, Tensor};

pub(crate) fn activation(field: &str, name: &str) -> Result<Activation> {
    Activation::parse(name).with_context(|| format!("unsupported UNet config: `{field}` = {name:?}"))
}

#[derive(Debug)]
struct TextTimeEmbedding {
    time_dim: i64,
    in_dim: i64,
    embedding: TimestepEmbedding,
}

/// What the contracting half computes for one evaluation, for the expanding half (or a ControlNet's outputs).
pub(crate) struct Encoded {
    pub h: Tensor,
    pub skips: Vec<Tensor>,
    pub emb: Tensor,
}

#[derive(Debug)]
pub(crate) struct UNetEncoder {
    pub conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    time_embed_act: Option<Activation>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub opts: BlockOpts,
}

impl UNetEncoder {
    pub fn new(vb: &VarBuilder, cfg: &UNetConfig, r: &Resolved, act: Activation) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
        let conv_in = Conv2d::new(
            &(vb / "conv_in"),
            cfg.in_channels,
            c0,
            cfg.conv_in_kernel,
            1,
            (cfg.conv_in_kernel - 1) / 2,
            true,
        )?;
        let post_act = cfg.timestep_post_act.as_deref().map(|a| activation("timestep_post_act", a)).transpose()?;
        let time_embedding = TimestepEmbedding::new(
            &(vb / "time_embedding"),
            c0,
            r.time_embed_dim,
            act,
            post_act,
            cfg.time_cond_proj_dim,
        )?;
        let add_embedding = match (cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim) {
            (Some(time_dim), Some(in_dim)) if cfg.addition_embed_type.is_some() => Some(TextTimeEmbedding {
                time_dim,
                in_dim,
                embedding: TimestepEmbedding::new(
                    &(vb / "add_embedding"),
                    in_dim,
                    r.time_embed_dim,
                    Activation::Silu,
                    None,
                    None,
                )?,
            }),
            _ => None,
        };
        let time_embed_act =
            cfg.time_embedding_act_fn.as_deref().map(|a| activation("time_embedding_act_fn", a)).transpose()?;
        let opts = BlockOpts {
            resnet: ResnetOpts {
                temb: r.time_embed_dim,
                groups: r.groups,
                eps: cfg.norm_eps,
                act,
                scale_shift: r.scale_shift,
                output_scale_factor: 1.0,
            },
            linear_projection: cfg.use_linear_projection,
            upcast_attention: cfg.upcast_attention,
            downsample_padding: cfg.downsample_padding,
        };
        let n = r.down.len();
        let mut down_blocks = Vec::with_capacity(n);
        let mut in_ch = c0;
        for (i, spec) in r.down.iter().enumerate() {
            down_blocks.push(DownBlock::new(&(vb / "down_blocks" / i), in_ch, spec, i + 1 < n, &opts)?);
            in_ch = spec.channels;
        }
        let mid_block = if r.mid {
            Some(MidBlock::new(&(vb / "mid_block"), &r.down[n - 1], &opts, cfg.mid_block_scale_factor)?)
        } else {
            None
        };
        Ok(Self { conv_in, time_embedding, add_embedding, time_embed_act, down_blocks, mid_block, opts })
    }

    pub fn attentions_mut(&mut self) -> (impl Iterator<Item = &mut Attention>, impl Iterator<Item = &mut Attention>) {
        (
            self.down_blocks.iter_mut().flat_map(|b| b.attentions_mut()),
            self.mid_block.iter_mut().flat_map(|b| b.attentions_mut()),
        )
    }

    /// The time embedding `[B, time_embed_dim]` for `timesteps` `[B]` (plus SDXL's text-time, LCM's guidance).
    pub fn embed(
        &self,
        cfg: &UNetConfig,
        timesteps: &Tensor,
        batch: i64,
        kind: Kind,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c0 = cfg.block_out_channels[0];
        let t_emb = timestep_embedding(timesteps, c0, cfg.flip_sin_to_cos, cfg.freq_shift)?.to_kind(kind);
        let mut emb = self.time_embedding.forward(&t_emb, timestep_cond)?;
        if let Some(add) = &self.add_embedding {
            let Some(a) = added else {
                bail!("this UNet (addition_embed_type = \"text_time\", e.g. SDXL) needs added conditioning: text_embeds and time_ids");
            };
            let (te, ti) = (a.text_embeds.size(), a.time_ids.size());
            // Six ids for SDXL base (sizes and crop), five for the refiner (sizes, crop and an aesthetic score).
            let ids = if ti.len() == 2 && ti[1] == 5 { 5 } else { 6 };
            let expected = add.in_dim - ids * add.time_dim;
            if te != [batch, expected] || ti != [batch, ids] {
                bail!("SDXL added conditioning must be text_embeds [{batch}, {expected}] and time_ids [{batch}, {ids}] (5 ids for a refiner), got {te:?} and {ti:?}");
            }
            let time_ids = a.time_ids.to_device(timesteps.device()).f_flatten(0, -1)?;
            let time_embeds = timestep_embedding(&time_ids, add.time_dim, cfg.flip_sin_to_cos, cfg.freq_shift)?
                .f_reshape([a.text_embeds.size()[0], -1])?;
            let add_embeds = Tensor::f_cat(&[a.text_embeds.to_kind(Kind::Float), time_embeds], -1)?.to_kind(emb.kind());
            emb += add.embedding.forward(&add_embeds, None)?;
        }
        if let Some(a) = self.time_embed_act {
            emb = a.forward(&emb);
        }
        Ok(emb)
    }

    /// `conv_in` (plus `after_conv_in`, a ControlNet's embedded condition), the down blocks (with T2I-Adapter
    /// residuals), the mid block.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        sample: &Tensor,
        emb: Tensor,
        ctx: &Tensor,
        pass: &Pass,
        after_conv_in: Option<&Tensor>,
        intrablock: Option<&[Tensor]>,
    ) -> Result<Encoded> {
        let mut h = self.conv_in.forward(sample);
        if let Some(c) = after_conv_in {
            h = h
                .f_add(c)
                .with_context(|| format!("the embedded condition {:?} does not fit {:?}", c.size(), h.size()))?;
        }
        let (mut h, skips) = self.down_path(h, &emb, ctx, pass, intrablock, usize::MAX)?;
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &emb, ctx, pass).context("UNet mid block")?;
        }
        Ok(Encoded { h, skips, emb })
    }

    /// The down blocks from `h` (`conv_in`'s output, the first skip), stopping once `skip_limit` skips exist
    /// (`usize::MAX`: every block): returns the last hidden state and the skips. A shallow pass of a split UNet
    /// (`super::split`) asks only for the skips its remaining up layers consume.
    pub fn down_path(
        &self,
        mut h: Tensor,
        emb: &Tensor,
        ctx: &Tensor,
        pass: &Pass,
        intrablock: Option<&[Tensor]>,
        skip_limit: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = vec![h.shallow_clone()];
        let mut intrablock = intrablock.unwrap_or(&[]).iter();
        for (i, block) in self.down_blocks.iter().enumerate() {
            if skips.len() >= skip_limit {
                break;
            }
            let residual = intrablock.next();
            h = block
                .forward(&h, emb, ctx, pass, &mut skips, residual, skip_limit)
                .with_context(|| format!("UNet down block {i}"))?;
        }
        Ok((h, skips))
    }
}
