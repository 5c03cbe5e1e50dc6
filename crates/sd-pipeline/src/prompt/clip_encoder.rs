//! [`TextEncoder`] for sd-models' CLIP tokenizer + text model, and [`TextEncoders::new`] over such pairs.

use super::embeddings::EmbeddingSet;
use super::encoder::{comma_id, EncoderOutput, SpecialIds, TextEncoder, TextEncoders};
use anyhow::{Context, Result};
use sd_models::clip::{ClipTextModel, ClipTokenizer};
use std::path::Path;
use tch::Tensor;

/// One tokenizer + CLIP text model.
pub struct ClipPair {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel,
    comma: Option<u32>,
}

impl ClipPair {
    pub fn new(tokenizer: ClipTokenizer, model: ClipTextModel) -> Self {
        let comma = comma_id(|t| tokenizer.encode_raw(t));
        Self { tokenizer, model, comma }
    }
}

impl TextEncoder for ClipPair {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_raw(text)
    }

    fn special_ids(&self) -> SpecialIds {
        SpecialIds {
            bos: self.tokenizer.bos(),
            eos: self.tokenizer.eos(),
            pad: self.tokenizer.pad(),
            comma: self.comma,
        }
    }

    fn encode(&self, ids: &Tensor, replacements: &[(usize, Tensor)]) -> Result<EncoderOutput> {
        let _guard = tch::no_grad_guard();
        let out = self.model.forward_with_replacements(ids, replacements)?;
        Ok(EncoderOutput {
            last_hidden_state: out.last_hidden_state,
            hidden_states: out.hidden_states,
            text_embeds: out.text_embeds,
        })
    }

    fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.model.final_layer_norm(x))
    }

    fn hidden_size(&self) -> i64 {
        self.model.config().hidden_size
    }
}

impl TextEncoders {
    /// One pair for SD1/SD2, two for SDXL (`tokenizer` + `text_encoder`, then `tokenizer_2` + `text_encoder_2`).
    pub fn new(pairs: Vec<(ClipTokenizer, ClipTextModel)>) -> Result<Self> {
        Self::from_encoders(
            pairs.into_iter().map(|(t, m)| Box::new(ClipPair::new(t, m)) as Box<dyn TextEncoder>).collect(),
        )
    }

    /// Load the textual-inversion embeddings of `dir` (replacing any loaded before). Every embedding file must
    /// load; ones made for another model family are skipped and described in the returned notes.
    pub fn load_embeddings(&mut self, dir: &Path) -> Result<Vec<String>> {
        let (set, skipped) = EmbeddingSet::load_dir(dir, &self.encoders)
            .with_context(|| format!("--embeddings-dir {}", dir.display()))?;
        self.embeddings = set;
        Ok(skipped)
    }
}
