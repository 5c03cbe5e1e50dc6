//! Where a CLIP BPE vocabulary comes from: the original OpenAI merges file (`bpe_simple_vocab_16e6.txt.gz`), a
//! `tokenizers` serialization (`tokenizer.json`), or the `vocab.json` + `merges.txt` pair that hub SD repos ship,
//! plus the special tokens that `tokenizer_config.json` / `special_tokens_map.json` declare.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use tokenizers::models::bpe::Vocab;

/// Token → id table and the ordered merge rules of a byte-level BPE.
pub struct BpeVocab {
    pub vocab: Vocab,
    pub merges: Vec<(String, String)>,
}

/// The special tokens of a CLIP tokenizer, as strings (their ids come from the vocabulary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
    pub unk: String,
    pub pad: String,
    pub model_max_length: usize,
}

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// How many merges of the OpenAI file make up the 49 408-token vocabulary every CLIP text encoder uses:
/// 49 408 − 512 byte tokens − 2 specials.
pub const CLIP_MERGES: usize = 48_894;
/// The context length of every CLIP text encoder used by Stable Diffusion.
pub const CLIP_MAX_LEN: usize = 77;

impl Default for SpecialTokens {
    fn default() -> Self {
        Self {
            bos: START_OF_TEXT.into(),
            eos: END_OF_TEXT.into(),
            unk: END_OF_TEXT.into(),
            pad: END_OF_TEXT.into(),
            model_max_length: CLIP_MAX_LEN,
        }
    }
}

/// GPT-2/CLIP's reversible byte → printable character table: printable Latin-1 bytes map to themselves, the rest
/// to code points from U+0100 upwards, in byte order.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table: Vec<(u8, char)> =
        (0u32..256).filter(|&b| printable(b)).map(|b| (b as u8, char::from_u32(b).unwrap_or('?'))).collect();
    let mut next = 256u32;
    for b in 0u32..256 {
        if !printable(b) {
            table.push((b as u8, char::from_u32(next).unwrap_or('?')));
            next += 1;
        }
    }
    table
}

/// Build the HF CLIP vocabulary from the OpenAI merges file: the 256 byte characters, the same with `</w>`, the
/// first [`CLIP_MERGES`] merges joined, then `<|startoftext|>` and `<|endoftext|>` (49 406, 49 407).
pub fn from_openai_bpe(path: &Path) -> Result<BpeVocab> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open the CLIP BPE file {} (run `cargo xtask setup`, or point SD_CLIP_VOCAB at bpe_simple_vocab_16e6.txt.gz)",
            path.display()
        )
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not a gzip-compressed UTF-8 text file", path.display()))?;
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() < 1 + CLIP_MERGES {
        bail!(
            "{} holds {} lines; a CLIP BPE file has a header and at least {CLIP_MERGES} merges",
            path.display(),
            lines.len()
        );
    }
    let mut merges = Vec::with_capacity(CLIP_MERGES);
    for (n, line) in lines[1..=CLIP_MERGES].iter().enumerate() {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => merges.push((a.to_string(), b.to_string())),
            _ => bail!("{} line {}: expected two space-separated symbols, found {line:?}", path.display(), n + 2),
        }
    }
    let bytes: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut tokens: Vec<String> = bytes.clone();
    tokens.extend(bytes.iter().map(|b| format!("{b}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(START_OF_TEXT.into());
    tokens.push(END_OF_TEXT.into());
    let vocab = tokens.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
    Ok(BpeVocab { vocab, merges })
}

/// Vocabulary and merges of a `tokenizer.json` whose model is BPE (merges as `"a b"` strings or `["a", "b"]`).
pub fn from_tokenizer_json(path: &Path) -> Result<BpeVocab> {
    let json = read_json(path)?;
    let model = json.get("model").ok_or_else(|| anyhow!("{} has no `model` section", path.display()))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => bail!("{}: model.type is `{other}`, a CLIP tokenizer needs `BPE`", path.display()),
    }
    let vocab_obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{}: model.vocab is missing or not an object", path.display()))?;
    let mut vocab = Vocab::with_capacity(vocab_obj.len());
    for (tok, id) in vocab_obj {
        let id = id.as_u64().ok_or_else(|| anyhow!("{}: model.vocab[{tok:?}] is not an integer id", path.display()))?;
        vocab.insert(tok.clone(), id as u32);
    }
    let merges_val = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: model.merges is missing", path.display()))?;
    let mut merges = Vec::with_capacity(merges_val.len());
    for (i, m) in merges_val.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges
            .push(pair.ok_or_else(|| anyhow!("{}: model.merges[{i}] is not a pair of symbols: {m}", path.display()))?);
    }
    Ok(BpeVocab { vocab, merges })
}

/// The `vocab.json` + `merges.txt` pair (as the original slow tokenizer saved it).
pub fn from_vocab_and_merges(vocab_path: &Path, merges_path: &Path) -> Result<BpeVocab> {
    let (vocab, merges) =
        tokenizers::models::bpe::BPE::read_file(&vocab_path.to_string_lossy(), &merges_path.to_string_lossy())
            .map_err(|e| anyhow!("cannot read {} + {}: {e}", vocab_path.display(), merges_path.display()))?;
    Ok(BpeVocab { vocab, merges })
}

/// Special tokens and `model_max_length` the way transformers resolves them: `tokenizer_config.json` values,
/// overridden by `special_tokens_map.json` only for legacy configs (those without `added_tokens_decoder`).
/// This decides whether SD2 pads with `!` (0) or `<|endoftext|>` (49407).
pub fn special_tokens(dir: &Path) -> Result<SpecialTokens> {
    let mut out = SpecialTokens::default();
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.exists() { Some(read_json(&config_path)?) } else { None };
    let mut apply = |obj: &Value, origin: &Path| -> Result<()> {
        for (key, slot) in [
            ("bos_token", &mut out.bos),
            ("eos_token", &mut out.eos),
            ("unk_token", &mut out.unk),
            ("pad_token", &mut out.pad),
        ] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    *slot = token_content(v).ok_or_else(|| {
                        anyhow!("{}: `{key}` is neither a string nor {{\"content\": ...}}", origin.display())
                    })?
                }
            }
        }
        Ok(())
    };
    if let Some(c) = &config {
        apply(c, &config_path)?;
    }
    let legacy = config.as_ref().is_none_or(|c| c.get("added_tokens_decoder").is_none());
    let map_path = dir.join("special_tokens_map.json");
    if legacy && map_path.exists() {
        apply(&read_json(&map_path)?, &map_path)?;
    }
    if let Some(len) = config.as_ref().and_then(|c| c.get("model_max_length")) {
        // transformers writes a huge sentinel (1e30) when no length is known; SD always means 77 then.
        match len.as_u64() {
            Some(n) if (2..=1 << 20).contains(&n) => out.model_max_length = n as usize,
            Some(_) | None if len.is_number() => {}
            _ => bail!("{}: `model_max_length` is not a number: {len}", config_path.display()),
        }
    }
    Ok(out)
}

fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}
