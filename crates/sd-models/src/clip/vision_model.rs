//! transformers' `CLIPVisionModel` (the image tower the safety checker runs): patch embedding + class token +
//! learned positions, a pre-LayerNorm (`pre_layrnorm`, sic), the non-causal encoder, and `post_layernorm` on
//! the class token as the pooled output.
//!
//! Layouts: transformers 4 saved `CLIPVisionModel` under `vision_model.` (the hub's
//! `safety_checker/model.safetensors` therefore has `vision_model.vision_model.…`); transformers 5 drops it.

use super::config::ClipVisionConfig;
use super::encoder::{ClipEncoder, EncoderDims};
use crate::nn::{Conv2d, Embedding, LayerNorm};
use anyhow::{bail, Result};
use sd_core::weights::Init;
use sd_core::VarBuilder;
use tch::{Kind, Tensor};

pub struct ClipVisionModel {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    config: ClipVisionConfig,
}

pub struct ClipVisionOutput {
    /// Encoder output (no final norm): batch × (1 + patches) × hidden.
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the class token: batch × hidden.
    pub pooled: Tensor,
}

impl ClipVisionModel {
    /// `vb` points at a `CLIPVisionModel` state dict (with or without the inner `vision_model.` prefix).
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let act = cfg.validate()?;
        let vm = if vb.contains("vision_model.embeddings.class_embedding") { vb / "vision_model" } else { vb.clone() };
        let emb = &vm / "embeddings";
        if let Some(shape) = emb.shape_of("position_ids") {
            let _unused_buffer = emb.get_raw(&shape, "position_ids")?;
        }
        let c = cfg.hidden_size;
        let dims = EncoderDims {
            hidden: c,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            layers: cfg.num_hidden_layers,
            act,
            eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            class_embedding: emb.get_with_init(&[c], "class_embedding", Init::Normal { std: 1.0 })?,
            patch_embedding: Conv2d::new(
                &(&emb / "patch_embedding"),
                cfg.num_channels,
                c,
                cfg.patch_size,
                cfg.patch_size,
                0,
                false,
            )?,
            position_embedding: Embedding::new(&(&emb / "position_embedding"), cfg.num_positions(), c)?,
            pre_layrnorm: LayerNorm::new(&(&vm / "pre_layrnorm"), c, cfg.layer_norm_eps)?,
            encoder: ClipEncoder::new(&(&vm / "encoder"), &dims)?,
            post_layernorm: LayerNorm::new(&(&vm / "post_layernorm"), c, cfg.layer_norm_eps)?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// `pixels`: batch × channels × image_size × image_size, already normalised by the image processor.
    pub fn forward(&self, pixels: &Tensor) -> Result<ClipVisionOutput> {
        let x = self.embed(pixels)?;
        let last = self.encoder.forward(&x, false);
        let pooled = self.post_layernorm.forward(&last.select(1, 0));
        Ok(ClipVisionOutput { last_hidden_state: last, pooled })
    }

    /// transformers' `hidden_states` (`output_hidden_states=True`): the embeddings after `pre_layrnorm`, then each
    /// layer's output, and the pooled output from the last. IP-Adapter "plus" models read the penultimate entry.
    pub fn forward_hidden_states(&self, pixels: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        let x = self.embed(pixels)?;
        let states = self.encoder.forward_all(&x, false);
        let last = states.last().map(|t| t.select(1, 0)).unwrap_or_else(|| x.select(1, 0));
        Ok((states, self.post_layernorm.forward(&last)))
    }

    /// Class token + patches + positions, through `pre_layrnorm`: the encoder's input.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let size = pixels.size();
        let s = self.config.image_size;
        if size.len() != 4 || size[1] != self.config.num_channels || size[2] != s || size[3] != s {
            bail!(
                "the vision tower takes batch × {} × {s} × {s} pixels, found shape {size:?}",
                self.config.num_channels
            );
        }
        let w = &self.patch_embedding.weight;
        let pixels = pixels.to_device(w.device()).to_kind(w.kind());
        let patches = self.patch_embedding.forward(&pixels).flatten(2, -1).transpose(1, 2);
        let class = self.class_embedding.view([1, 1, -1]).expand([size[0], 1, self.config.hidden_size], false);
        let x = Tensor::f_cat(&[class, patches], 1)? + self.position_embedding.weight.unsqueeze(0);
        Ok(self.pre_layrnorm.forward(&x))
    }

    pub fn kind(&self) -> Kind {
        self.class_embedding.kind()
    }
}
