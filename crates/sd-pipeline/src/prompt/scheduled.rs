//! The conditioning of scheduled and composed prompts: every distinct text of the schedules encoded once (A1111
//! caches by prompt text too), all brought to the same number of 77-token chunks, and per step the batch the UNet
//! gets: `[negative, part₁, …, partₙ]`, each repeated for the images of the batch.
//!
//! Padding: a shorter text gets copies of the empty prompt's encoding appended, as [`super::encode_prompt_pair`]
//! does for a prompt and its negative (A1111 instead repeats the last vector between `AND` parts; the two only
//! differ for parts of different lengths above 75 tokens).

use super::composable::{PassSchedules, PromptPlan};
use super::conditioning::{encode_prompt, Conditioning, EncoderStyle, PromptSettings};
use super::encoder::TextEncoders;
use super::schedule::Pass;
use anyhow::{bail, Context, Result};
use tch::Tensor;

/// The encoded texts of a request's schedules.
pub struct ScheduledConditioning {
    pub plan: PromptPlan,
    texts: Vec<(String, Conditioning)>,
    /// SDXL's `force_zeros_for_empty_prompt` with an empty negative prompt: zeros instead of any encoding.
    zero_uncond: Option<Conditioning>,
}

/// What the UNet is conditioned on at one step, batched.
pub struct StepConditioning {
    /// `[(1 + parts) · b, tokens, D]` with guidance (negative first), `[b, tokens, D]` without.
    pub hidden: Tensor,
    /// SDXL's pooled text embeddings, batched like `hidden`.
    pub pooled: Option<Tensor>,
}

impl ScheduledConditioning {
    /// Encode every text the plan's schedules use over `passes`. `zero_negative`: the model's
    /// `force_zeros_for_empty_prompt` applies (SDXL with an empty negative prompt).
    pub fn encode(
        enc: &TextEncoders,
        plan: PromptPlan,
        passes: &[Pass],
        negative_is_empty: bool,
        s: &PromptSettings,
    ) -> Result<Self> {
        let zero_negative =
            negative_is_empty && matches!(s.style, EncoderStyle::Sdxl { force_zeros_for_empty_prompt: true });
        let mut wanted: Vec<String> = Vec::new();
        for &pass in passes {
            let sched = plan.schedules(pass);
            let positive = sched.parts.iter().flat_map(|(_, s)| s.entries.iter());
            let negative = sched.negative.entries.iter().filter(|_| !zero_negative);
            for e in positive.chain(negative) {
                if !wanted.contains(&e.text) {
                    wanted.push(e.text.clone());
                }
            }
        }
        let max = sd_core::limits::PROMPT_MAX_TEXTS;
        if wanted.len() > max {
            bail!(
                "{}",
                sd_core::limits::exceeded(
                    format!("the {} distinct texts of the prompt's schedules", wanted.len()),
                    "prompt texts",
                    max as u64,
                    "texts"
                )
            );
        }
        let mut texts = Vec::with_capacity(wanted.len());
        for text in wanted {
            let c = encode_prompt(enc, &text, s).with_context(|| format!("encoding the prompt text {text:?}"))?;
            texts.push((text, c));
        }
        let chunks = texts.iter().map(|(_, c)| c.chunks()).max().unwrap_or(1);
        if texts.iter().any(|(_, c)| c.chunks() != chunks) {
            let empty = encode_prompt(enc, "", s).context("encoding the empty prompt")?.hidden;
            for (_, c) in texts.iter_mut() {
                let missing = chunks - c.chunks();
                if missing > 0 {
                    let extra = empty.f_repeat([1, missing, 1])?;
                    c.hidden = Tensor::f_cat(&[&c.hidden, &extra], 1)?;
                }
            }
        }
        let zero_uncond = match (zero_negative, texts.first()) {
            (false, _) => None,
            (true, Some((_, c))) => {
                Some(Conditioning { hidden: c.hidden.zeros_like(), pooled: c.pooled.as_ref().map(|p| p.zeros_like()) })
            }
            (true, None) => bail!("the prompt has no text to encode"),
        };
        Ok(Self { plan, texts, zero_uncond })
    }

    /// The distinct texts encoded, in order of first use.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.texts.iter().map(|(t, _)| t.as_str())
    }

    fn get(&self, text: &str) -> Result<&Conditioning> {
        match self.texts.iter().find(|(t, _)| t == text) {
            Some((_, c)) => Ok(c),
            None => bail!(
                "the prompt schedule needs the text {text:?}, which was not encoded (prompts were encoded for other \
                 steps; a hires fix needs `encode_prompts_hires`)"
            ),
        }
    }

    /// Whether every text `sched` can ask for is encoded.
    pub fn covers(&self, sched: &PassSchedules) -> bool {
        let negative = sched.negative.entries.iter().filter(|_| self.zero_uncond.is_none());
        let mut all = sched.parts.iter().flat_map(|(_, s)| s.entries.iter()).chain(negative);
        all.all(|e| self.texts.iter().any(|(t, _)| *t == e.text))
    }

    /// The conditioning in force at schedule step `step`, each text repeated `b` times; with `cfg` the negative
    /// first, then one block per `AND` part.
    pub fn at(&self, sched: &PassSchedules, step: usize, b: i64, cfg: bool) -> Result<StepConditioning> {
        let mut picked: Vec<&Conditioning> = Vec::with_capacity(sched.parts.len() + 1);
        if cfg {
            picked.push(match &self.zero_uncond {
                Some(z) => z,
                None => self.get(sched.negative.at(step))?,
            });
        }
        for (_, s) in &sched.parts {
            picked.push(self.get(s.at(step))?);
        }
        let rep = |t: &Tensor| -> Result<Tensor> {
            let mut dims = vec![b];
            dims.extend(std::iter::repeat_n(1, t.dim() - 1));
            Ok(t.f_repeat(dims.as_slice())?)
        };
        let hidden: Vec<Tensor> = picked.iter().map(|c| rep(&c.hidden)).collect::<Result<_>>()?;
        let pooled = match picked.iter().map(|c| c.pooled.as_ref()).collect::<Option<Vec<_>>>() {
            Some(p) => Some(Tensor::f_cat(&p.into_iter().map(rep).collect::<Result<Vec<_>>>()?, 0)?),
            None => None,
        };
        Ok(StepConditioning { hidden: Tensor::f_cat(&hidden, 0)?, pooled })
    }
}
