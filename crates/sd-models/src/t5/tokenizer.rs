//! SD3's T5 tokenizer: the Unigram vocabulary of `tokenizer_3/tokenizer.json` run by the `tokenizers` crate, then
//! truncated to `max_length − 1` tokens, closed with `</s>` and padded with `<pad>` to `max_length`, as
//! `tokenizer_3(prompt, padding="max_length", truncation=True)` does.
//!
//! transformers 5's `T5Tokenizer` does not run the file's pipeline as saved: it keeps only the vocabulary (unknown
//! token at id 2), the SentencePiece precompiled normaliser if the file has one, and its own pre-tokenizer
//! (whitespace split, then Metaspace "▁" prepended to every word). The tokenizer is rebuilt here the same way, so a
//! file whose saved normaliser differs (NFKC, say) still tokenizes as the reference does.

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use tokenizers::Tokenizer;

/// Largest `max_sequence_length` accepted (SD3 allows up to 512).
pub const MAX_SEQUENCE_LENGTH: usize = 512;
/// Largest tokenizer.json read (the real T5 one is 2.4 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

pub struct T5Tokenizer {
    inner: Tokenizer,
    eos: u32,
    pad: u32,
}

impl T5Tokenizer {
    /// From a `tokenizer_3/` folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let len = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "{}: the T5 tokenizer needs tokenizer.json (spiece.model alone is not supported)",
                    path.display()
                )
            })?
            .len();
        ensure!(
            len <= MAX_TOKENIZER_BYTES,
            "{}: {len} bytes, more than the {MAX_TOKENIZER_BYTES} accepted",
            path.display()
        );
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let inner = rebuild(&file).with_context(|| format!("{}", path.display()))?;
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| anyhow!("{}: the vocabulary lacks the T5 token {t}", path.display()))
        };
        let (eos, pad) = (id("</s>")?, id("<pad>")?);
        Ok(Self { inner, eos, pad })
    }

    /// Ids without special tokens or padding.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("T5 tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `max_length` ids: the prompt's (truncated to leave room), `</s>`, then `<pad>`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Vec<u32>> {
        ensure!(
            (1..=MAX_SEQUENCE_LENGTH).contains(&max_length),
            "T5 max_sequence_length {max_length} is outside 1..={MAX_SEQUENCE_LENGTH}"
        );
        let mut ids = self.encode_plain(text)?;
        ids.truncate(max_length - 1);
        ids.push(self.eos);
        ids.resize(max_length, self.pad);
        Ok(ids)
    }
}

/// transformers' `T5Tokenizer.__init__` on a tokenizer.json: its Unigram vocabulary, its precompiled normaliser
/// (directly or inside a sequence), the fixed pre-tokenizer, and its added tokens; no post-processing.
fn rebuild(file: &Value) -> Result<Tokenizer> {
    let model = &file["model"];
    ensure!(
        model["type"].as_str() == Some("Unigram"),
        "the T5 tokenizer must be a Unigram (SentencePiece) model, found {}",
        model["type"]
    );
    let vocab = model["vocab"].as_array().ok_or_else(|| anyhow!("the Unigram model has no vocab list"))?;
    ensure!(vocab.len() > 2, "the Unigram vocab has {} entries; T5 needs at least <pad>, </s>, <unk>", vocab.len());
    let normalizer = match &file["normalizer"] {
        Value::Object(n) if n.get("type").and_then(Value::as_str) == Some("Sequence") => n
            .get("normalizers")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().find(|x| x["type"].as_str() == Some("Precompiled")).cloned())
            .unwrap_or(Value::Null),
        n if n["type"].as_str() == Some("Precompiled") => n.clone(),
        _ => Value::Null,
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": file.get("added_tokens").cloned().unwrap_or(json!([])),
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}
        ]},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false}
    });
    spec.to_string().parse::<Tokenizer>().map_err(|e| anyhow!("building the T5 tokenizer: {e}"))
}
