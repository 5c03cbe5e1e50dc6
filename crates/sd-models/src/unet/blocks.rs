//! The UNet's levels (diffusers `unet_2d_blocks.py`). `DownBlock2D`/`CrossAttnDownBlock2D` are one type here
//! (the cross-attention variant just has `attentions`), likewise the up blocks, so every model family shares
//! the same code; `UNetMidBlock2DCrossAttn` is resnet, then (transformer, resnet) pairs.

use super::config::BlockSpec;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetOpts, Upsample2D};
use super::transformer::{Transformer2DModel, TransformerOpts};
use super::Pass;
use crate::attention::Attention;
use anyhow::{anyhow, Result};
use sd_core::weights::VarBuilder;
use std::ops::Range;
use tch::Tensor;

/// Settings shared by all blocks of one UNet.
#[derive(Clone, Copy, Debug)]
pub struct BlockOpts {
    pub resnet: ResnetOpts,
    pub linear_projection: bool,
    pub upcast_attention: bool,
    pub downsample_padding: i64,
}

fn transformer_opts(spec: &BlockSpec, o: &BlockOpts) -> TransformerOpts {
    TransformerOpts {
        heads: spec.heads,
        layers: spec.transformer_layers,
        cross_attention_dim: spec.cross_attention_dim,
        groups: o.resnet.groups,
        linear_projection: o.linear_projection,
        only_cross_attention: spec.only_cross_attention,
        upcast_attention: o.upcast_attention,
    }
}

fn attentions(vb: &VarBuilder, spec: &BlockSpec, o: &BlockOpts) -> Result<Vec<Transformer2DModel>> {
    if !spec.attention {
        return Ok(Vec::new());
    }
    let topts = transformer_opts(spec, o);
    (0..spec.layers).map(|i| Transformer2DModel::new(&(vb / "attentions" / i), spec.channels, &topts)).collect()
}

#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: &VarBuilder, in_ch: i64, spec: &BlockSpec, downsample: bool, o: &BlockOpts) -> Result<Self> {
        let resnets = (0..spec.layers)
            .map(|i| {
                ResnetBlock2D::new(
                    &(vb / "resnets" / i),
                    if i == 0 { in_ch } else { spec.channels },
                    spec.channels,
                    &o.resnet,
                )
            })
            .collect::<Result<_>>()?;
        let downsampler = if downsample {
            Some(Downsample2D::new(&(vb / "downsamplers" / 0), spec.channels, o.downsample_padding)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions: attentions(vb, spec, o)?, downsampler })
    }

    /// Skip connections this level produces: one per resnet, plus one after the downsampler.
    pub fn skip_count(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }

    /// Whether this level has cross-attention transformers (diffusers' `CrossAttnDownBlock2D`).
    pub fn has_cross_attention(&self) -> bool {
        !self.attentions.is_empty()
    }

    pub fn attentions_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.attentions.iter_mut().flat_map(|t| t.attentions_mut())
    }

    /// Returns the output and pushes every intermediate the up path will concatenate onto `skips`.
    ///
    /// `residual` is a T2I-Adapter feature for this level (diffusers' `down_intrablock_additional_residuals`):
    /// a cross-attention level adds it after its last resnet/transformer pair, before that output becomes a skip;
    /// a plain level adds it to its output after the downsampler, which diffusers does in place, so the last skip
    /// (the same tensor) carries it too.
    ///
    /// `skip_limit` stops the level as soon as `skips` holds that many tensors (`usize::MAX`: the whole level):
    /// a shallow pass (see `super::split`) computes only the skips its up layers will consume.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        pass: &Pass,
        skips: &mut Vec<Tensor>,
        residual: Option<&Tensor>,
        skip_limit: usize,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let last = self.resnets.len().saturating_sub(1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            if skips.len() >= skip_limit {
                return Ok(h);
            }
            h = resnet.forward(&h, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, ctx, pass)?;
                if let (true, Some(r)) = (i == last, residual) {
                    h = h.f_add(r)?;
                }
            }
            skips.push(h.shallow_clone());
        }
        if skips.len() >= skip_limit {
            return Ok(h);
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            skips.push(h.shallow_clone());
        }
        if let (false, Some(r)) = (self.has_cross_attention(), residual) {
            h = h.f_add(r)?;
            if let Some(s) = skips.last_mut() {
                *s = h.shallow_clone();
            }
        }
        Ok(h)
    }
}

#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `prev_ch`: channels coming from the level below; `skip_in_ch`: channels of this level's last skip
    /// (the input width of the matching down block).
    pub fn new(
        vb: &VarBuilder,
        prev_ch: i64,
        skip_in_ch: i64,
        spec: &BlockSpec,
        upsample: bool,
        o: &BlockOpts,
    ) -> Result<Self> {
        let out = spec.channels;
        let resnets = (0..spec.layers)
            .map(|i| {
                let skip = if i == spec.layers - 1 { skip_in_ch } else { out };
                let input = if i == 0 { prev_ch } else { out };
                ResnetBlock2D::new(&(vb / "resnets" / i), input + skip, out, &o.resnet)
            })
            .collect::<Result<_>>()?;
        let upsampler = if upsample { Some(Upsample2D::new(&(vb / "upsamplers" / 0), out)?) } else { None };
        Ok(Self { resnets, attentions: attentions(vb, spec, o)?, upsampler })
    }

    pub fn attentions_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.attentions.iter_mut().flat_map(|t| t.attentions_mut())
    }

    /// Number of resnet (or resnet + transformer) layers: the skips this level consumes.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// Consumes one skip per resnet from the end of `skips`; `upsample_size` is the spatial size of the next
    /// level up (the skip that will be concatenated after upsampling).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        pass: &Pass,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.forward_layers(x, 0..self.resnets.len(), temb, ctx, pass, skips)
    }

    /// [`Self::forward`] for the layers in `layers` only: the level's upsampler runs when the range reaches its
    /// last layer. Running `0..j` then `j..layers()` is the whole level; a split UNet (see `super::split`) stops
    /// or resumes at `j`.
    pub fn forward_layers(
        &self,
        x: &Tensor,
        layers: Range<usize>,
        temb: &Tensor,
        ctx: &Tensor,
        pass: &Pass,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let end = layers.end;
        for i in layers {
            let resnet = self.resnets.get(i).ok_or_else(|| anyhow!("UNet up block has no layer {i}"))?;
            let skip =
                skips.pop().ok_or_else(|| anyhow!("UNet skip connections exhausted (inconsistent block layout)"))?;
            h = resnet.forward(&Tensor::f_cat(&[&h, &skip], 1)?, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, ctx, pass)?;
            }
        }
        if end < self.resnets.len() {
            return Ok(h);
        }
        if let Some(up) = &self.upsampler {
            let next =
                skips.last().ok_or_else(|| anyhow!("UNet up block has an upsampler but no skip connection left"))?;
            let size = next.size();
            h = up.forward(&h, [size[2], size[3]])?;
        }
        Ok(h)
    }
}

#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    /// `spec`: the deepest down block (its heads, cross-attention width and transformer depth are used).
    pub fn new(vb: &VarBuilder, spec: &BlockSpec, o: &BlockOpts, output_scale_factor: f64) -> Result<Self> {
        let ch = spec.channels;
        let ropts = ResnetOpts { output_scale_factor, ..o.resnet };
        let topts = TransformerOpts { only_cross_attention: false, ..transformer_opts(spec, o) };
        Ok(Self {
            first: ResnetBlock2D::new(&(vb / "resnets" / 0), ch, ch, &ropts)?,
            layers: vec![(
                Transformer2DModel::new(&(vb / "attentions" / 0), ch, &topts)?,
                ResnetBlock2D::new(&(vb / "resnets" / 1), ch, ch, &ropts)?,
            )],
        })
    }

    pub fn attentions_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.layers.iter_mut().flat_map(|(t, _)| t.attentions_mut())
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: &Tensor, pass: &Pass) -> Result<Tensor> {
        let mut h = self.first.forward(x, temb)?;
        for (attn, resnet) in &self.layers {
            h = resnet.forward(&attn.forward(&h, ctx, pass)?, temb)?;
        }
        Ok(h)
    }
}
