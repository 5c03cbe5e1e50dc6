//! SD3 prompt text → the transformer's conditioning, reading AUTOMATIC1111's prompt syntax as its SD3 support
//! (`modules/models/sd3/sd3_cond.py`) does, on top of diffusers' `StableDiffusion3Pipeline.encode_prompt` layout.
//!
//! - **CLIP-L and CLIP-G** (A1111's `Sd3ClipLG`): the prompt is parsed (`(word:1.2)`, `[word]`, `\(` escapes,
//!   `BREAK`) and chunked into 75-token chunks exactly as for SDXL ([`crate::prompt::chunks`]); each chunk's two
//!   penultimate hidden states are concatenated on the feature axis and zero-padded to the transformer's
//!   `joint_attention_dim`, and the weights act on that *joint* tensor: A1111's "Original" emphasis multiplies every
//!   token's vector by its weight and rescales the chunk so the mean of the whole padded `[1, 77, joint]` tensor is
//!   unchanged (one mean over both encoders, unlike SDXL, where each encoder is rescaled on its own). The pooled
//!   vector is the first chunk's CLIP-L and CLIP-G projected pooled outputs, unweighted (A1111's `zs[0].pooled`).
//!   A prompt over 75 tokens therefore gives several CLIP chunks (A1111), where diffusers truncates to 77 tokens;
//!   prompts of at most 75 tokens without syntax give diffusers' numbers bit for bit. Each encoder uses its own
//!   tokenizer (diffusers' `tokenizer` / `tokenizer_2`, whose vocabularies are the same in SD3: A1111 uses the first
//!   for both and pads CLIP-G's ids with 0, which is `tokenizer_2`'s pad id).
//! - **T5**: A1111 parses the prompt too but never applies the weights to T5: its tokens are each run's tokens
//!   (the syntax stripped, `BREAK` dropped) joined, closed with `</s>`, padded. sd-rs does the same, at diffusers'
//!   `max_sequence_length` (A1111 pads T5 to the CLIP token count instead).
//! - **Emphasis modes**: "none" feeds all three encoders the literal text; "ignore" parses but weights nothing;
//!   "no-norm" weights without restoring the mean.

use crate::prompt::chunks::{pad_after_end, tokenize_line, ChunkIds, NoEmbeddings, PromptChunk};
use crate::prompt::emphasis::{all_ones, Emphasis};
use crate::prompt::encoder::comma_id;
use crate::prompt::parser::{parse_prompt_attention_f64, BREAK_WEIGHT};
use anyhow::{ensure, Context, Result};
use sd_models::clip::{ClipTextModel, ClipTokenizer};
use sd_models::t5::T5Tokenizer;
use tch::Tensor;

/// One CLIP encoder of SD3 with its tokenizer.
pub struct ClipEncoder {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel,
}

/// Positions of one CLIP chunk (75 prompt tokens with the start and end tokens).
pub const CHUNK_TOKENS: i64 = 77;

/// The (text, weight) runs A1111 reads a line as under `emphasis`.
pub fn runs(line: &str, emphasis: Emphasis) -> Vec<(String, f64)> {
    match emphasis {
        Emphasis::None => vec![(line.to_string(), 1.0)],
        _ => parse_prompt_attention_f64(line),
    }
}

impl ClipEncoder {
    /// The line's 77-token chunks (ids with multipliers) for this encoder's tokenizer.
    pub fn chunks(&self, line: &str, emphasis: Emphasis) -> Result<Vec<PromptChunk>> {
        let tok = &self.tokenizer;
        let ids = ChunkIds { bos: tok.bos(), eos: tok.eos(), comma: comma_id(|t| tok.encode_raw(t)) };
        let (chunks, _) = tokenize_line(&runs(line, emphasis), &mut |t: &str| tok.encode_raw(t), ids, &NoEmbeddings)?;
        Ok(chunks)
    }

    /// (penultimate hidden state `[1, 77, width]`, projected pooled output `[1, projection]`) of one chunk.
    fn encode_chunk(&self, chunk: &PromptChunk) -> Result<(Tensor, Tensor)> {
        let tok = &self.tokenizer;
        let ids: Vec<i64> = pad_after_end(&chunk.tokens, tok.eos(), tok.pad()).into_iter().map(i64::from).collect();
        let out = self.model.forward(&Tensor::from_slice(&ids).unsqueeze(0))?;
        let n = out.hidden_states.len();
        ensure!(n >= 2, "the CLIP encoder has no penultimate layer");
        let pooled = out.text_embeds.context("CLIP encoder without projection")?;
        Ok((out.hidden_states[n - 2].shallow_clone(), pooled))
    }
}

/// The CLIP part of SD3's conditioning.
pub struct ClipPart {
    /// `[1, 77 · chunks, width]`, f32 or the encoders' dtype, zero-padded on the feature axis to `width`.
    pub hidden: Tensor,
    /// `[1, projection_l + projection_g]`: the first chunk's pooled outputs.
    pub pooled: Tensor,
}

/// CLIP-L reads `text_l`, CLIP-G `text_g` (diffusers' `prompt` and `prompt_2`); their outputs are concatenated
/// and padded to `width` features. When the two texts chunk differently (possible only with two different texts)
/// the shorter is completed with its encoder's chunk of the empty prompt, as A1111 completes a prompt to its
/// negative's length.
pub fn encode_clip(
    l: &ClipEncoder,
    g: &ClipEncoder,
    (text_l, text_g): (&str, &str),
    width: i64,
    emphasis: Emphasis,
) -> Result<ClipPart> {
    let (mut cl, mut cg) = (l.chunks(text_l, emphasis)?, g.chunks(text_g, emphasis)?);
    let n = cl.len().max(cg.len());
    for (enc, chunks) in [(l, &mut cl), (g, &mut cg)] {
        if chunks.len() < n {
            let empty = enc.chunks("", Emphasis::None)?.into_iter().next().context("the empty prompt has no chunk")?;
            chunks.resize(n, empty);
        }
    }
    let mut zs = Vec::with_capacity(n);
    let mut pooled = None;
    for (a, b) in cl.iter().zip(&cg) {
        let (zl, pl) = l.encode_chunk(a).context("running CLIP-L (text_encoder)")?;
        let (zg, pg) = g.encode_chunk(b).context("running CLIP-G (text_encoder_2)")?;
        let clip = Tensor::f_cat(&[&zl, &zg], -1)?;
        let pad = width - clip.size()[2];
        ensure!(pad >= 0, "the CLIP widths together ({}) exceed the transformer's width {width}", clip.size()[2]);
        let clip = clip.f_constant_pad_nd([0, pad])?;
        // all-ones weights would leave the chunk unchanged (old mean / new mean is exactly 1): skipped, as for SDXL
        let plain = all_ones(&a.multipliers) && all_ones(&b.multipliers);
        let clip = if plain {
            clip
        } else {
            joint_emphasis(&clip, (&a.multipliers, zl.size()[2]), (&b.multipliers, zg.size()[2]), emphasis)?
        };
        if pooled.is_none() {
            pooled = Some(Tensor::f_cat(&[pl, pg], -1)?);
        }
        zs.push(clip);
    }
    let pooled = pooled.context("the prompt gave no CLIP chunk")?;
    Ok(ClipPart { hidden: Tensor::f_cat(&zs, 1)?, pooled })
}

/// A1111's emphasis on one SD3 chunk `[1, 77, width]` (CLIP-L features, then CLIP-G's, then zeros): each token's
/// CLIP-L features are multiplied by its CLIP-L weight and its CLIP-G features by its CLIP-G weight (the same
/// weights in A1111, which has one prompt for both), the padding by 1; "Original" then scales the chunk by
/// old mean / new mean over the whole tensor, the order of operations of A1111's `EmphasisOriginal`.
pub fn joint_emphasis(
    clip: &Tensor,
    (mult_l, width_l): (&[f32], i64),
    (mult_g, width_g): (&[f32], i64),
    emphasis: Emphasis,
) -> Result<Tensor> {
    if matches!(emphasis, Emphasis::Ignore | Emphasis::None) {
        return Ok(clip.shallow_clone());
    }
    let size = clip.size();
    let tokens = mult_l.len() as i64;
    ensure!(
        size.len() == 3 && size[1] == tokens && mult_g.len() == mult_l.len() && size[2] >= width_l + width_g,
        "emphasis: the CLIP chunk has shape {size:?}, expected [1, {tokens}, ≥ {}]",
        width_l + width_g
    );
    let opts = (clip.kind(), clip.device());
    let col = |m: &[f32], w: i64| -> Result<Tensor> {
        Ok(Tensor::from_slice(m)
            .f_to_kind(opts.0)?
            .to_device(opts.1)
            .f_reshape([1, tokens, 1])?
            .f_expand([1, tokens, w], false)?)
    };
    let ones = Tensor::f_ones([1, tokens, size[2] - width_l - width_g], opts)?;
    let mults = Tensor::f_cat(&[col(mult_l, width_l)?, col(mult_g, width_g)?, ones], 2)?;
    let original_mean = clip.f_mean(None).context("emphasis: mean of the CLIP chunk")?;
    let weighted = clip.f_mul(&mults)?;
    if emphasis == Emphasis::NoNorm {
        return Ok(weighted);
    }
    let new_mean = weighted.f_mean(None)?;
    Ok(weighted.f_mul(&original_mean.f_div(&new_mean)?)?)
}

/// T5's `max_length` ids for `line` as A1111 feeds T5: each parsed run tokenized on its own (no start token),
/// `BREAK` dropped, the weights unused; then truncated to leave room for `</s>`, closed and padded as diffusers'
/// `tokenizer_3(…, padding="max_length", truncation=True)`. A plain prompt is one run: diffusers' ids exactly.
pub fn t5_ids(tok: &T5Tokenizer, line: &str, max_length: usize, emphasis: Emphasis) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for (text, weight) in runs(line, emphasis) {
        if text == "BREAK" && weight == BREAK_WEIGHT {
            continue;
        }
        ids.extend(tok.encode_plain(&text)?);
        if ids.len() >= max_length {
            break;
        }
    }
    tok.finish(ids, max_length)
}
