//! transformers' `CLIPTextModel` (SD1: CLIP ViT-L/14, quick_gelu; SD2: OpenCLIP ViT-H, gelu) and
//! `CLIPTextModelWithProjection` (SDXL's second encoder), in one type.
//!
//! Two weight layouts exist for the same network: transformers 4 saved `CLIPTextModel` under `text_model.`
//! (every SD repo on the hub), transformers 5 saves it without the prefix; the projection variant keeps
//! `text_model.` plus `text_projection.weight` in both. The layout is told apart by which keys exist.

use super::config::ClipTextConfig;
use super::encoder::{ClipEncoder, EncoderDims};
use crate::nn::{Embedding, LayerNorm, Linear};
use anyhow::{bail, Context, Result};
use sd_core::VarBuilder;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    config: ClipTextConfig,
}

/// What one forward pass gives.
pub struct ClipTextOutput {
    /// Final layer output after `final_layer_norm`: batch × tokens × hidden.
    pub last_hidden_state: Tensor,
    /// Embeddings output followed by each layer's output, before any final norm (transformers'
    /// `output_hidden_states`, length `num_hidden_layers + 1`). SD1/SD2 clip skip normalises one of these
    /// ([`ClipTextModel::clip_skip_hidden`]); SDXL takes the penultimate one as is.
    pub hidden_states: Vec<Tensor>,
    /// `last_hidden_state` at the end token of each sequence: batch × hidden.
    pub pooled: Tensor,
    /// `text_projection(pooled)` for the projection variant: batch × projection_dim.
    pub text_embeds: Option<Tensor>,
}

impl ClipTextModel {
    /// Load a `text_encoder/` (or `text_encoder_2/`) folder: `config.json` plus safetensors weights.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let with_projection = cfg.declares_projection() || vb.contains("text_projection.weight");
        let model = Self::from_varbuilder(&vb, &cfg, with_projection)?;
        vb.finish("CLIP text encoder", &[])?;
        Ok(model)
    }

    /// Build from any weight source. The caller calls `vb.finish` (a present `position_ids` buffer is consumed
    /// here, so it never shows up as unused).
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let act = cfg.validate()?;
        let prefixed = with_projection || vb.contains("text_model.embeddings.token_embedding.weight");
        let tm = if prefixed { vb / "text_model" } else { vb.clone() };
        let emb = &tm / "embeddings";
        if let Some(shape) = emb.shape_of("position_ids") {
            let _unused_buffer = emb.get_raw(&shape, "position_ids")?;
        }
        let dims = EncoderDims {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            layers: cfg.num_hidden_layers,
            act,
            eps: cfg.layer_norm_eps,
        };
        let text_projection = if with_projection {
            Some(Linear::new(&(vb / "text_projection"), cfg.hidden_size, cfg.projection_dim, false)?)
        } else {
            None
        };
        Ok(Self {
            token_embedding: Embedding::new(&(&emb / "token_embedding"), cfg.vocab_size, cfg.hidden_size)?,
            position_embedding: Embedding::new(
                &(&emb / "position_embedding"),
                cfg.max_position_embeddings,
                cfg.hidden_size,
            )?,
            encoder: ClipEncoder::new(&(&tm / "encoder"), &dims)?,
            final_layer_norm: LayerNorm::new(&(&tm / "final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            text_projection,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// `ids`: batch × tokens integer ids (tokens ≤ `max_position_embeddings`).
    pub fn forward(&self, ids: &Tensor) -> Result<ClipTextOutput> {
        self.forward_with_replacements(ids, &[])
    }

    /// [`Self::forward`] with some token embeddings replaced before the position embeddings are added: each
    /// `(position, vectors)` overwrites rows `position..position + n` of every sequence with the `n` rows of
    /// `vectors` (`n × hidden`). This is how textual-inversion embeddings enter the model (sd-pipeline `prompt`);
    /// pooling still follows `ids`.
    pub fn forward_with_replacements(&self, ids: &Tensor, replacements: &[(usize, Tensor)]) -> Result<ClipTextOutput> {
        let ids = self.check_ids(ids)?;
        let (batch, len) = (ids.size()[0], ids.size()[1]);
        let device = crate::stream::device_of(&self.token_embedding.weight);
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let tokens = self.token_embedding.forward(&ids);
        for (position, vectors) in replacements {
            let n = vectors.size().first().copied().unwrap_or(0);
            let (pos, hidden) = (*position as i64, self.config.hidden_size);
            if vectors.dim() != 2 || vectors.size()[1] != hidden || pos + n > len {
                bail!(
                    "embedding vectors of shape {:?} at position {pos} do not fit {len} tokens of width {hidden}",
                    vectors.size()
                );
            }
            let v = vectors.to_device(device).to_kind(tokens.kind()).unsqueeze(0).expand([batch, n, hidden], false);
            tokens.narrow(1, pos, n).copy_(&v);
        }
        let x = tokens + self.position_embedding.forward(&positions).unsqueeze(0);
        let hidden_states = self.encoder.forward_all(&x, true);
        let last = hidden_states.last().map(|h| self.final_layer_norm.forward(h)).context("encoder has no output")?;
        // transformers: legacy configs (eos_token_id == 2) pool at argmax(ids), newer ones at the first eos id.
        let eos_pos = match self.config.eos_token_id {
            Some(2) | None => ids.argmax(-1, false),
            Some(eos) => ids.eq(eos).to_kind(Kind::Int).argmax(-1, false),
        };
        let pooled = last.index(&[Some(Tensor::arange(batch, (Kind::Int64, device))), Some(eos_pos)]);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(&pooled));
        Ok(ClipTextOutput { last_hidden_state: last, hidden_states, pooled, text_embeds })
    }

    /// The encoder's `final_layer_norm`, for clip skip on an earlier hidden state.
    pub fn final_layer_norm(&self, x: &Tensor) -> Tensor {
        self.final_layer_norm.forward(x)
    }

    /// What diffusers feeds the UNet for `clip_skip` (diffusers numbering, A1111's value minus one):
    /// `final_layer_norm(hidden_states[-(clip_skip + 1)])`; 0 is the ordinary `last_hidden_state`.
    pub fn clip_skip_hidden(&self, out: &ClipTextOutput, clip_skip: usize) -> Result<Tensor> {
        let n = out.hidden_states.len();
        if clip_skip + 1 > n {
            bail!("clip skip {clip_skip} is too large for a text encoder with {} layers", n.saturating_sub(1));
        }
        Ok(self.final_layer_norm(&out.hidden_states[n - 1 - clip_skip]))
    }

    fn check_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        if size.len() != 2 || size[1] == 0 || size[0] == 0 {
            bail!("token ids must be a non-empty batch × tokens tensor, found shape {size:?}");
        }
        if size[1] > self.config.max_position_embeddings {
            bail!(
                "{} tokens exceed the text encoder's max_position_embeddings ({})",
                size[1],
                self.config.max_position_embeddings
            );
        }
        if ids.is_floating_point() || ids.kind() == Kind::Bool {
            bail!("token ids must be integers, found {:?}", ids.kind());
        }
        let ids = ids.to_kind(Kind::Int64).to_device(crate::stream::device_of(&self.token_embedding.weight));
        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size {
            bail!(
                "token id out of range: found ids in [{lo}, {hi}], the vocabulary has {} entries",
                self.config.vocab_size
            );
        }
        Ok(ids)
    }
}
