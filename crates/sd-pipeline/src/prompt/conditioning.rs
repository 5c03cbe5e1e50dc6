//! Prompt text → the tensors the UNet cross-attends to (A1111 `sd_hijack_clip.py` `forward`/`process_tokens`,
//! diffusers `encode_prompt` for the layer choices).
//!
//! Layer choice (`clip_skip` in A1111 numbering, 1 = last layer):
//! - SD1/SD2: `last_hidden_state` for 1; `final_layer_norm(hidden_states[-clip_skip])` above, as A1111 does for
//!   SD1 and diffusers (`clip_skip - 1`) for both. A1111 ignores clip skip on SD2; we follow diffusers.
//! - SDXL: `hidden_states[-(clip_skip + 1)]` of both encoders without the final layer norm, concatenated on the
//!   feature axis (diffusers; 1 = the penultimate layer, which is also A1111's default). A1111 ignores clip skip on
//!   SDXL unless its `sdxl_clip_l_skip` option is on; we follow diffusers. The pooled vector is encoder 2's
//!   `text_embeds` of the first chunk (A1111 `zs[0].pooled`; the same single chunk diffusers encodes).
//!
//! Padding: each chunk is `[start, tokens, end, end…]`, and for tokenizers whose pad token is not the end token
//! (SD2, SDXL's second) everything after the first end token becomes the pad token. For a plain prompt of at most
//! 75 tokens this is exactly diffusers' `padding="max_length"` input, so the result equals diffusers'.

use super::chunks::{pad_after_end, tokenize_line, ChunkIds, PromptChunk};
use super::emphasis::{all_ones, apply_emphasis, Emphasis};
use super::encoder::{TextEncoder, TextEncoders};
use super::parser::parse_prompt_attention_f64;
use anyhow::{anyhow, bail, Context, Result};
use tch::Tensor;

/// How a model family's text encoders are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderStyle {
    Sd1,
    Sd2,
    /// `force_zeros_for_empty_prompt` (SDXL `model_index.json`/pipeline config): an empty negative prompt gives
    /// all-zero unconditional embeddings instead of the encoding of "".
    Sdxl {
        force_zeros_for_empty_prompt: bool,
    },
}

/// Everything besides the text that decides the conditioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptSettings {
    /// A1111 numbering: 1 = last layer (default), 2 = the one before, … (diffusers' `clip_skip` + 1).
    pub clip_skip: usize,
    pub emphasis: Emphasis,
    pub style: EncoderStyle,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self { clip_skip: 1, emphasis: Emphasis::Original, style: EncoderStyle::Sd1 }
    }
}

/// What the UNet is conditioned on for one prompt.
#[derive(Debug)]
pub struct Conditioning {
    /// `[1, 77 * chunks, D]` (D = 768 SD1, 1024 SD2, 2048 SDXL).
    pub hidden: Tensor,
    /// SDXL's pooled text embedding `[1, 1280]`.
    pub pooled: Option<Tensor>,
}

impl Conditioning {
    pub fn chunks(&self) -> i64 {
        self.hidden.size().get(1).copied().unwrap_or(0) / 77
    }
}

/// The (text, weight) runs a line is chunked from under the given emphasis mode.
fn runs_for(line: &str, emphasis: Emphasis) -> Vec<(String, f64)> {
    match emphasis {
        Emphasis::None => vec![(line.to_string(), 1.0)],
        _ => parse_prompt_attention_f64(line),
    }
}

/// Chunks of `line` for encoder `index` (ids, multipliers and embedding slots).
pub fn chunks_for(enc: &TextEncoders, index: usize, line: &str, emphasis: Emphasis) -> Result<Vec<PromptChunk>> {
    let encoder = enc.encoder(index).ok_or_else(|| anyhow!("no text encoder {index}"))?;
    let special = encoder.special_ids();
    let ids = ChunkIds { bos: special.bos, eos: special.eos, comma: special.comma };
    let mut tokenize = |t: &str| encoder.tokenize(t);
    let finder = enc.embeddings.finder(index);
    let (chunks, _) = tokenize_line(&runs_for(line, emphasis), &mut tokenize, ids, &finder)?;
    Ok(chunks)
}

/// The hidden state a style/clip-skip combination selects from one encoder pass.
fn select_layer(encoder: &dyn TextEncoder, out: &super::encoder::EncoderOutput, s: &PromptSettings) -> Result<Tensor> {
    let n = out.hidden_states.len();
    let skip = s.clip_skip.max(1);
    let from_end = match s.style {
        EncoderStyle::Sdxl { .. } => skip + 1,
        _ if skip == 1 => return Ok(out.last_hidden_state.shallow_clone()),
        _ => skip,
    };
    if from_end > n {
        bail!("clip skip {} asks for hidden state -{from_end}, but the text encoder has only {n}", s.clip_skip);
    }
    let h = &out.hidden_states[n - from_end];
    match s.style {
        EncoderStyle::Sdxl { .. } => Ok(h.shallow_clone()),
        _ => encoder.final_layer_norm(h),
    }
}

/// One encoder's `[1, 77 * chunks, D]` output, and its first chunk's projected pooled output if it has one.
fn encode_with(
    enc: &TextEncoders,
    index: usize,
    chunks: &[PromptChunk],
    s: &PromptSettings,
) -> Result<(Tensor, Option<Tensor>)> {
    let encoder = enc.encoder(index).ok_or_else(|| anyhow!("no text encoder {index}"))?;
    let special = encoder.special_ids();
    let mut zs = Vec::with_capacity(chunks.len());
    let mut pooled = None;
    for chunk in chunks {
        let tokens: Vec<i64> =
            pad_after_end(&chunk.tokens, special.eos, special.pad).into_iter().map(i64::from).collect();
        let ids = Tensor::from_slice(&tokens).reshape([1, -1]);
        let replacements = super::embeddings::chunk_replacements(&enc.embeddings, &chunk.fixes, index, tokens.len())?;
        let out = encoder.encode(&ids, &replacements).with_context(|| format!("running text encoder {}", index + 1))?;
        let z = select_layer(encoder, &out, s)?;
        let z = if all_ones(&chunk.multipliers) { z } else { apply_emphasis(&z, &chunk.multipliers, s.emphasis)? };
        if pooled.is_none() {
            pooled = out.text_embeds.as_ref().map(|t| t.shallow_clone());
        }
        zs.push(z);
    }
    Ok((Tensor::f_cat(&zs, 1)?, pooled))
}

/// Encode one prompt (A1111 semantics; equals diffusers for plain prompts of at most 75 tokens).
pub fn encode_prompt(enc: &TextEncoders, line: &str, s: &PromptSettings) -> Result<Conditioning> {
    let expected = match s.style {
        // The SDXL refiner has only the second (OpenCLIP G) encoder.
        EncoderStyle::Sdxl { .. } if enc.len() == 1 => 1,
        EncoderStyle::Sdxl { .. } => 2,
        _ => 1,
    };
    if enc.len() != expected {
        bail!("{:?} prompts need {expected} text encoder(s); the model has {}", s.style, enc.len());
    }
    let mut hidden = Vec::new();
    let mut pooled = None;
    for index in 0..enc.len() {
        let chunks = chunks_for(enc, index, line, s.emphasis)?;
        let (h, p) = encode_with(enc, index, &chunks, s)?;
        hidden.push(h);
        pooled = p.or(pooled);
    }
    if let [a, b] = hidden.as_slice() {
        if a.size()[1] != b.size()[1] {
            bail!(
                "the two text encoders split the prompt into different numbers of chunks ({} vs {} tokens)",
                a.size()[1],
                b.size()[1]
            );
        }
    }
    let hidden = if hidden.len() == 1 { hidden.remove(0) } else { Tensor::f_cat(&hidden, 2)? };
    let pooled = match s.style {
        EncoderStyle::Sdxl { .. } => Some(
            pooled
                .ok_or_else(|| anyhow!("SDXL's second text encoder gave no projected pooled output (text_embeds)"))?,
        ),
        _ => None,
    };
    Ok(Conditioning { hidden, pooled })
}

/// Encode prompt and negative prompt and bring them to the same number of chunks: the shorter one gets copies of
/// the encoding of the empty prompt appended (A1111's "pad prompt/negative prompt to be same length"). With SDXL's
/// `force_zeros_for_empty_prompt`, an empty negative prompt gives zeros shaped like the prompt (diffusers).
pub fn encode_prompt_pair(
    enc: &TextEncoders,
    prompt: &str,
    negative: &str,
    s: &PromptSettings,
) -> Result<(Conditioning, Conditioning)> {
    let cond = encode_prompt(enc, prompt, s).context("encoding the prompt")?;
    if matches!(s.style, EncoderStyle::Sdxl { force_zeros_for_empty_prompt: true }) && negative.is_empty() {
        let uncond =
            Conditioning { hidden: cond.hidden.zeros_like(), pooled: cond.pooled.as_ref().map(|p| p.zeros_like()) };
        return Ok((cond, uncond));
    }
    let uncond = encode_prompt(enc, negative, s).context("encoding the negative prompt")?;
    let (a, b) = (cond.chunks(), uncond.chunks());
    if a == b {
        return Ok((cond, uncond));
    }
    let empty = encode_prompt(enc, "", s).context("encoding the empty prompt")?.hidden;
    let pad = |c: Conditioning, repeats: i64| -> Result<Conditioning> {
        let extra = empty.f_repeat([1, repeats, 1])?;
        Ok(Conditioning { hidden: Tensor::f_cat(&[c.hidden, extra], 1)?, pooled: c.pooled })
    };
    Ok(if a < b { (pad(cond, b - a)?, uncond) } else { (cond, pad(uncond, a - b)?) })
}
