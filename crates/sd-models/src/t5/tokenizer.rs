//! SD3's T5 tokenizer: the Unigram vocabulary of `tokenizer_3/tokenizer.json` run by the `tokenizers` crate, then
//! truncated to `max_length − 1` tokens, closed with `</s>` and padded with `<pad>` to `max_length`, as
//! `tokenizer_3(prompt, padding="max_length", truncation=True)` does.
//!
//! transformers 5's `T5Tokenizer` does not run the file's pipeline as saved: it keeps only the vocabulary (unknown
//! token at id 2), the SentencePiece precompiled normaliser if the file has one, and its own pre-tokenizer
//! (whitespace split, then Metaspace "▁" prepended to every word). The tokenizer is rebuilt here the same way, so a
//! file whose saved normaliser differs (NFKC, say) still tokenizes as the reference does.
//!
//! A folder with only SentencePiece's `spiece.model` (older hub repos) is read as transformers converts it
//! (`T5Converter` / `convert_from_spm`): the model's pieces and scores in order, then T5's 100 sentinels
//! `<extra_id_99>` … `<extra_id_0>` (so `<extra_id_0>` has the last id), the proto's precompiled charsmap as the
//! normaliser, the same pre-tokenizer, and `<pad>`, `</s>`, `<unk>` and the sentinels as special tokens matched
//! in the raw text ([`super::spiece`] reads the file). The `add_dummy_prefix` / whitespace flags of the proto are
//! not read, as transformers 5 does not read them for T5 either.

use super::spiece::SentencePieceModel;
use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use tokenizers::normalizers::Precompiled;
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
    /// From a `tokenizer_3/` folder: its `tokenizer.json`, or its `spiece.model` when that is all there is.
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let spiece = dir.join("spiece.model");
        if json.is_file() || !spiece.is_file() {
            Self::finish_load(from_tokenizer_json(&json)?, &json)
        } else {
            Self::load_spiece(&spiece)
        }
    }

    /// From SentencePiece's `spiece.model` alone, as transformers converts it (see the module docs).
    pub fn load_spiece(path: &Path) -> Result<Self> {
        Self::finish_load(from_spiece(path).with_context(|| format!("{}", path.display()))?, path)
    }

    fn finish_load(inner: Tokenizer, path: &Path) -> Result<Self> {
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
        self.finish(self.encode_plain(text)?, max_length)
    }

    /// Prompt ids → `max_length` ids: truncated to leave room for `</s>`, closed with it, padded with `<pad>`.
    pub fn finish(&self, mut ids: Vec<u32>, max_length: usize) -> Result<Vec<u32>> {
        ensure!(
            (1..=MAX_SEQUENCE_LENGTH).contains(&max_length),
            "T5 max_sequence_length {max_length} is outside 1..={MAX_SEQUENCE_LENGTH}"
        );
        ids.truncate(max_length - 1);
        ids.push(self.eos);
        ids.resize(max_length, self.pad);
        Ok(ids)
    }
}

/// T5 sentinels transformers adds to a `spiece.model`'s vocabulary (`extra_ids`).
pub const EXTRA_IDS: usize = 100;

fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: the T5 tokenizer needs tokenizer.json or spiece.model", path.display()))?
        .len();
    ensure!(
        len <= MAX_TOKENIZER_BYTES,
        "{}: {len} bytes, more than the {MAX_TOKENIZER_BYTES} accepted",
        path.display()
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    rebuild(&file).with_context(|| format!("{}", path.display()))
}

/// transformers' `T5Tokenizer` built from a `spiece.model` (see the module docs).
fn from_spiece(path: &Path) -> Result<Tokenizer> {
    let sp = SentencePieceModel::load(path)?;
    // transformers fixes T5's unknown id at 2 whatever the file says; a file laid out otherwise is not a T5 one
    let first: Vec<&str> = sp.pieces.iter().take(3).map(|p| p.piece.as_str()).collect();
    ensure!(
        first == ["<pad>", "</s>", "<unk>"],
        "T5's first three pieces must be <pad>, </s>, <unk> (ids 0, 1, 2); this model starts with {first:?}"
    );
    let mut vocab: Vec<Value> = sp.pieces.iter().map(|p| json!([p.piece, f64::from(p.score)])).collect();
    vocab.extend((0..EXTRA_IDS).rev().map(|i| json!([format!("<extra_id_{i}>"), 0.0])));
    let mut specials: Vec<(usize, String)> =
        ["<pad>", "</s>", "<unk>"].iter().map(|t| t.to_string()).enumerate().collect();
    specials.extend((0..EXTRA_IDS).map(|i| (sp.pieces.len() + EXTRA_IDS - 1 - i, format!("<extra_id_{i}>"))));
    let added: Vec<Value> = specials
        .into_iter()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let file = json!({"model": {"type": "Unigram", "vocab": vocab}, "added_tokens": added, "normalizer": null});
    let tok = rebuild(&file)?;
    if sp.precompiled_charsmap.is_empty() {
        return Ok(tok);
    }
    // validated by `SentencePieceModel::parse` before the crate (which indexes it unchecked) sees it
    let norm = Precompiled::from(&sp.precompiled_charsmap).map_err(|e| anyhow!("the normaliser's charsmap: {e}"))?;
    let mut tok = tok;
    tok.with_normalizer(Some(norm)).map_err(|e| anyhow!("setting the T5 normaliser: {e}"))?;
    Ok(tok)
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
