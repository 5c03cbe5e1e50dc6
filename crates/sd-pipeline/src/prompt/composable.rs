//! Composable diffusion (`a cat :1.2 AND a dog :0.8`) as AUTOMATIC1111 reads it (`get_multicond_prompt_list`,
//! `combine_denoised`): the prompt is cut at every `AND` standing as a word, each part may end in `:weight`, each
//! part gets its own UNet pass, and the guided prediction is `uncond + Σ wᵢ · cfg · (condᵢ − uncond)`. Each part
//! has its own editing schedule ([`super::schedule`]); the negative prompt has a schedule but no `AND`.

use super::schedule::{ParsedPrompt, Pass, Schedule, Timeline};
use anyhow::{bail, Context, Result};

/// One `AND` part: its text (weight suffix removed) and weight.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SubPrompt {
    pub text: String,
    pub weight: f64,
}

/// Cut `prompt` at each `AND` with a word boundary on both sides (Python's `\bAND\b`), then read each part's
/// trailing `:number` (A1111's `re_weight`: optional blanks around the colon, `[-+]?(\d+\.?|\d*\.\d+)`, trailing
/// blanks dropped; leading blanks stay). Errors above [`sd_core::limits::PROMPT_MAX_AND_PARTS`] parts.
pub fn split_and(prompt: &str) -> Result<Vec<SubPrompt>> {
    let pieces = split_on_and(prompt);
    let max = sd_core::limits::PROMPT_MAX_AND_PARTS;
    if pieces.len() > max {
        bail!(
            "{}",
            sd_core::limits::exceeded(
                format!("the prompt's {} AND parts", pieces.len()),
                "prompt AND parts",
                max as u64,
                "parts"
            )
        );
    }
    Ok(pieces.into_iter().map(weighted).collect())
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn split_on_and(prompt: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = prompt.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= chars.len() {
        let is_and = chars[i].1 == 'A' && chars[i + 1].1 == 'N' && chars[i + 2].1 == 'D';
        let left = i == 0 || !is_word(chars[i - 1].1);
        let right = chars.get(i + 3).is_none_or(|&(_, c)| !is_word(c));
        if is_and && left && right {
            out.push(&prompt[start..chars[i].0]);
            start = chars.get(i + 3).map(|&(b, _)| b).unwrap_or(prompt.len());
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push(&prompt[start..]);
    out
}

/// A1111's weight suffix: the shortest text such that the rest is blanks, or blanks `:` blanks number blanks.
fn weighted(part: &str) -> SubPrompt {
    let bounds: Vec<usize> = part.char_indices().map(|(b, _)| b).chain([part.len()]).collect();
    for &k in &bounds {
        let rest = &part[k..];
        if rest.trim_start().is_empty() {
            return SubPrompt { text: part[..k].to_string(), weight: 1.0 };
        }
        if let Some(w) = weight_suffix(rest) {
            return SubPrompt { text: part[..k].to_string(), weight: w };
        }
    }
    SubPrompt { text: part.to_string(), weight: 1.0 }
}

/// `\s*:\s*[-+]?(\d+\.?|\d*\.\d+)\s*$` on the whole of `rest`.
fn weight_suffix(rest: &str) -> Option<f64> {
    let r = rest.trim_start().strip_prefix(':')?.trim_start().trim_end();
    let digits = r.strip_prefix(['+', '-']).unwrap_or(r);
    let (int, frac) = match digits.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let ok = all_digits(int)
        && frac.is_none_or(all_digits)
        && match frac {
            None => !int.is_empty(),
            Some(f) => !int.is_empty() || !f.is_empty(),
        };
    if !ok {
        return None;
    }
    r.parse::<f64>().ok()
}

/// A request's prompts ready for scheduling: the `AND` parts of the prompt and the negative prompt, parsed.
#[derive(Clone, Debug)]
pub struct PromptPlan {
    pub parts: Vec<(SubPrompt, ParsedPrompt)>,
    pub negative: ParsedPrompt,
    pub timeline: Timeline,
}

/// The schedules of one pass.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PassSchedules {
    /// Per `AND` part: its weight and schedule.
    pub parts: Vec<(f64, Schedule)>,
    pub negative: Schedule,
}

impl PassSchedules {
    /// Every distinct text the pass needs, positive parts first, in order of first use.
    pub fn texts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self.parts.iter().map(|(_, s)| s).chain([&self.negative]);
        for s in all {
            for e in &s.entries {
                if !out.contains(&e.text.as_str()) {
                    out.push(&e.text);
                }
            }
        }
        out
    }
}

impl PromptPlan {
    /// `prompt` (LoRA tags already removed) and `negative` as A1111 reads them.
    pub fn new(prompt: &str, negative: &str) -> Result<Self> {
        let parts = split_and(prompt)?
            .into_iter()
            .map(|p| {
                let parsed = ParsedPrompt::parse(&p.text).context("reading the prompt")?;
                Ok((p, parsed))
            })
            .collect::<Result<Vec<_>>>()?;
        let negative = ParsedPrompt::parse(negative).context("reading the negative prompt")?;
        Ok(Self { parts, negative, timeline: Timeline::New })
    }

    pub fn schedules(&self, pass: Pass) -> PassSchedules {
        PassSchedules {
            parts: self.parts.iter().map(|(p, parsed)| (p.weight, parsed.schedule(pass, self.timeline))).collect(),
            negative: self.negative.schedule(pass, self.timeline),
        }
    }

    /// Whether the prompt is one part of weight 1 (plain classifier-free guidance).
    pub fn is_plain(&self) -> bool {
        matches!(self.parts.as_slice(), [(p, _)] if p.weight == 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str, weight: f64) -> SubPrompt {
        SubPrompt { text: text.into(), weight }
    }

    #[test]
    fn and_split_and_weights_as_a1111() {
        assert_eq!(split_and("a cat :1.2 AND a dog :0.8").unwrap(), vec![s("a cat", 1.2), s(" a dog", 0.8)]);
        assert_eq!(
            split_and("xANDy AND z:2 AND w: -1.5 AND ").unwrap(),
            vec![s("xANDy", 1.0), s(" z", 2.0), s(" w", -1.5), s("", 1.0)]
        );
        assert_eq!(split_and("(x:1.2)").unwrap(), vec![s("(x:1.2)", 1.0)]);
        assert_eq!(split_and("a:1.2:3").unwrap(), vec![s("a:1.2", 3.0)]);
        assert_eq!(split_and("a:").unwrap(), vec![s("a:", 1.0)]);
        assert_eq!(split_and("a :.5  ").unwrap(), vec![s("a", 0.5)]);
        assert_eq!(split_and("a :5.").unwrap(), vec![s("a", 5.0)]);
        assert_eq!(split_and("é AND_x,AND,y").unwrap(), vec![s("é AND_x,", 1.0), s(",y", 1.0)]);
    }

    #[test]
    fn too_many_parts_is_an_error() {
        let p = vec!["x"; sd_core::limits::PROMPT_MAX_AND_PARTS + 1].join(" AND ");
        let err = split_and(&p).unwrap_err().to_string();
        assert!(err.contains("prompt AND parts"), "{err}");
        let p = vec!["x"; sd_core::limits::PROMPT_MAX_AND_PARTS].join(" AND ");
        assert_eq!(split_and(&p).unwrap().len(), sd_core::limits::PROMPT_MAX_AND_PARTS);
    }
}
