//! The text encoders a prompt goes through: one (SD1/SD2) or two (SDXL) tokenizer + CLIP text model pairs, seen
//! through the small [`TextEncoder`] trait so that chunking and weighting do not depend on the model code.

use super::embeddings::EmbeddingSet;
use anyhow::Result;
use tch::Tensor;

/// What one pass of a text model gives back for a `[1, 77]` chunk.
pub struct EncoderOutput {
    /// After the final layer norm.
    pub last_hidden_state: Tensor,
    /// The embeddings output followed by each layer's output (transformers' `hidden_states`).
    pub hidden_states: Vec<Tensor>,
    /// The projected pooled output (`CLIPTextModelWithProjection.text_embeds`), when the model has a projection.
    pub text_embeds: Option<Tensor>,
}

/// Token ids a prompt encoder needs besides the text.
#[derive(Clone, Copy, Debug)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// `,</w>`: where long prompts prefer to be split.
    pub comma: Option<u32>,
}

/// One tokenizer + text model pair.
pub trait TextEncoder {
    /// The text's token ids without start/end tokens, padding or truncation.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;
    fn special_ids(&self) -> SpecialIds;
    /// Run the model on `ids` (`[1, 77]`, i64, any device). Each `(position, vectors)` replaces the token
    /// embeddings from `position` on by the rows of `vectors` (`[n, hidden]`, any device/dtype) before position
    /// embeddings are added: how textual-inversion embeddings enter the model.
    fn encode(&self, ids: &Tensor, replacements: &[(usize, Tensor)]) -> Result<EncoderOutput>;
    fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor>;
    /// Width of the token embeddings (768 for CLIP ViT-L, 1024 OpenCLIP ViT-H, 1280 OpenCLIP ViT-bigG).
    fn hidden_size(&self) -> i64;
}

/// The prompt encoders of a model, plus the textual-inversion embeddings usable in its prompts.
pub struct TextEncoders {
    pub(crate) encoders: Vec<Box<dyn TextEncoder>>,
    pub(crate) embeddings: EmbeddingSet,
}

impl TextEncoders {
    /// From already-built encoders (1 for SD1/SD2, 2 for SDXL in the pipeline's order).
    pub fn from_encoders(encoders: Vec<Box<dyn TextEncoder>>) -> Result<Self> {
        if encoders.is_empty() || encoders.len() > 2 {
            anyhow::bail!("a model has one or two text encoders; got {}", encoders.len());
        }
        Ok(Self { encoders, embeddings: EmbeddingSet::default() })
    }

    pub fn len(&self) -> usize {
        self.encoders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoders.is_empty()
    }

    /// Drop the encoders (weights and tokenizers); the set is empty afterwards.
    pub fn release(&mut self) {
        self.encoders.clear();
    }

    pub fn encoder(&self, i: usize) -> Option<&dyn TextEncoder> {
        self.encoders.get(i).map(|e| e.as_ref())
    }

    /// The loaded textual-inversion embeddings.
    pub fn embeddings(&self) -> &EmbeddingSet {
        &self.embeddings
    }
}

/// The comma id of a tokenizer, found the way A1111 does (the `,</w>` entry): the one token `,` encodes to.
pub fn comma_id(tokenize: impl Fn(&str) -> Result<Vec<u32>>) -> Option<u32> {
    match tokenize(",").ok()?.as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}
