//! diffusers' `ImageProjection` (base adapters) and `IPAdapterFullImageProjection` ("full-face" adapters): the
//! small maps from the image encoder's output to tokens the UNet's cross-attention layers can attend to.

use crate::nn::{Activation, LayerNorm, Linear};
use anyhow::{bail, Context, Result};
use sd_core::VarBuilder;
use tch::Tensor;

/// Base adapters always make four tokens (diffusers hard-codes `num_image_text_embeds = 4` for this layout).
pub const BASE_TOKENS: i64 = 4;

/// `ImageProjection`: `image_embeds` `[B, D]` → `Linear` → `[B, 4, cross]` → `LayerNorm`.
pub struct ImageProjection {
    image_embeds: Linear,
    norm: LayerNorm,
    pub cross_attention_dim: i64,
    pub image_embed_dim: i64,
}

impl ImageProjection {
    /// Sizes come from `image_embeds.weight` (`[4 · cross, D]`), as diffusers infers them.
    pub fn new(vb: &VarBuilder) -> Result<Self> {
        let shape = vb.shape_of("image_embeds.weight").context("`image_embeds.weight` is missing")?;
        let [rows, image_embed_dim] = shape.as_slice() else {
            bail!("`proj.weight` must be a matrix, found shape {shape:?}");
        };
        if rows % BASE_TOKENS != 0 || *rows == 0 {
            bail!("`proj.weight` has {rows} rows: expected 4 tokens × the cross-attention width");
        }
        let cross = rows / BASE_TOKENS;
        Ok(Self {
            image_embeds: Linear::new(&(vb / "image_embeds"), *image_embed_dim, *rows, true)?,
            norm: LayerNorm::new(&(vb / "norm"), cross, 1e-5)?,
            cross_attention_dim: cross,
            image_embed_dim: *image_embed_dim,
        })
    }

    pub fn forward(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let b = image_embeds.size()[0];
        let x = self.image_embeds.forward(image_embeds).f_reshape([b, -1, self.cross_attention_dim])?;
        Ok(self.norm.forward(&x))
    }
}

/// `IPAdapterFullImageProjection`: every token of the penultimate hidden state through diffusers' `FeedForward`
/// (`mult=1`, exact GELU) and a `LayerNorm`.
pub struct FullImageProjection {
    proj: Linear,
    out: Linear,
    norm: LayerNorm,
    pub cross_attention_dim: i64,
    pub image_embed_dim: i64,
}

impl FullImageProjection {
    pub fn new(vb: &VarBuilder) -> Result<Self> {
        let dims = |name: &str| -> Result<(i64, i64)> {
            match vb.shape_of(name).as_deref() {
                Some([rows, cols]) => Ok((*rows, *cols)),
                other => bail!("`{name}` must be a matrix, found {other:?}"),
            }
        };
        let (image_embed_dim, _) = dims("ff.net.0.proj.weight")?;
        let (cross, _) = dims("ff.net.2.weight")?;
        Ok(Self {
            proj: Linear::new(&(vb / "ff.net.0.proj"), image_embed_dim, image_embed_dim, true)?,
            out: Linear::new(&(vb / "ff.net.2"), image_embed_dim, cross, true)?,
            norm: LayerNorm::new(&(vb / "norm"), cross, 1e-5)?,
            cross_attention_dim: cross,
            image_embed_dim,
        })
    }

    /// `hidden` `[B, tokens, D]` → `[B, tokens, cross]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = Activation::Gelu.forward(&self.proj.forward(hidden));
        Ok(self.norm.forward(&self.out.forward(&x)))
    }
}
