//! CLIP's byte-level BPE tokenizer, giving the same ids as transformers' `CLIPTokenizer`.
//!
//! transformers 5 builds `CLIPTokenizer` on the `tokenizers` library with a fixed pipeline, whatever file the
//! vocabulary came from (see `models/clip/tokenization_clip.py`): NFC, runs of whitespace → one space, lower
//! case, CLIP's split regex, byte-level mapping, BPE with `</w>` word ends. There is no ftfy and no HTML
//! unescaping (`&amp;` stays three tokens). bos/eos/unk/pad are registered as special tokens, so a pad token of
//! `!` (SD2, SDXL's second tokenizer) also turns every `!` typed in a prompt into the bare `!` token (id 0)
//! instead of `!</w>`: a quirk of the reference that real SD2/SDXL embeddings were made with, kept here.

use super::vocab::{self, BpeVocab, SpecialTokens, END_OF_TEXT};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// CLIP's word split (tokenization_clip.py): the two special tokens, English contractions, letter runs, single
/// digits, and runs of anything else that is neither space, letter nor digit.
const SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The file name of OpenAI's merges list, and the environment variable that can point at it.
pub const BPE_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";
pub const BPE_ENV: &str = "SD_CLIP_VOCAB";

/// Which token fills the sequence after the end token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadToken {
    /// `<|endoftext|>` (49407): SD 1.x and SDXL's first tokenizer.
    EndOfText,
    /// `!` (0): SD 2.x and SDXL's second tokenizer (OpenCLIP's zero padding).
    Exclamation,
}

pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

impl ClipTokenizer {
    /// Load a diffusers `tokenizer/` folder: `tokenizer.json`, or `vocab.json` + `merges.txt`, with the special
    /// tokens and `model_max_length` of `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let specials = vocab::special_tokens(dir)?;
        let json = dir.join("tokenizer.json");
        let (vocab_json, merges_txt) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let bpe = if json.exists() {
            vocab::from_tokenizer_json(&json)?
        } else if vocab_json.exists() && merges_txt.exists() {
            vocab::from_vocab_and_merges(&vocab_json, &merges_txt)?
        } else {
            bail!("{} holds no tokenizer: expected tokenizer.json, or vocab.json + merges.txt", dir.display());
        };
        Self::build(bpe, &specials).with_context(|| format!("cannot build the tokenizer of {}", dir.display()))
    }

    /// The full 49 408-token CLIP tokenizer built from OpenAI's merges file.
    pub fn from_bpe_file(path: &Path, pad: PadToken) -> Result<Self> {
        let bpe = vocab::from_openai_bpe(path)?;
        let pad = match pad {
            PadToken::EndOfText => END_OF_TEXT.to_string(),
            PadToken::Exclamation => "!".to_string(),
        };
        Self::build(bpe, &SpecialTokens { pad, ..SpecialTokens::default() })
    }

    /// Where the BPE file is looked for: `$SD_CLIP_VOCAB`, then `.sd-data/` next to the executable or any folder
    /// above it, then the workspace this crate was built in. The last candidate is returned even when missing,
    /// so that the error names a sensible place.
    pub fn default_bpe_path() -> PathBuf {
        if let Some(p) = std::env::var_os(BPE_ENV).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let rel = Path::new(".sd-data").join(BPE_FILE);
        let exe_dirs =
            std::env::current_exe().ok().map(|e| e.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>());
        for dir in exe_dirs.into_iter().flatten() {
            let candidate = dir.join(&rel);
            if candidate.is_file() {
                return candidate;
            }
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
    }

    fn build(bpe: BpeVocab, sp: &SpecialTokens) -> Result<Self> {
        if sp.model_max_length < 2 {
            bail!("model_max_length {} leaves no room for the start and end tokens", sp.model_max_length);
        }
        let unk_known = bpe.vocab.contains_key(&sp.unk);
        let mut builder = BPE::builder()
            .vocab_and_merges(bpe.vocab, bpe.merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false);
        if unk_known {
            builder = builder.unk_token(sp.unk.clone());
        }
        let model = builder.build().map_err(|e| anyhow!("invalid BPE vocabulary/merges: {e}"))?;
        let mut tok = Tokenizer::new(model);
        let whitespace = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(|e| anyhow!("whitespace normalizer: {e}"))?;
        tok.with_normalizer(Some(NormSeq::new(vec![NFC.into(), whitespace.into(), Lowercase.into()])))
            .map_err(|e| anyhow!("normalizer: {e}"))?;
        let split = Split::new(SplitPattern::Regex(SPLIT_REGEX.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| anyhow!("split regex: {e}"))?;
        tok.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
        let mut specials: Vec<&String> = vec![&sp.bos, &sp.eos, &sp.unk, &sp.pad];
        specials.dedup();
        tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(s.as_str(), true)))
            .map_err(|e| anyhow!("special tokens: {e}"))?;
        let id =
            |name: &str, s: &str| tok.token_to_id(s).ok_or_else(|| anyhow!("{name} `{s}` is not in the vocabulary"));
        let (bos, eos, pad) = (id("bos_token", &sp.bos)?, id("eos_token", &sp.eos)?, id("pad_token", &sp.pad)?);
        Ok(Self { inner: tok, bos, eos, pad, max_len: sp.model_max_length })
    }

    /// Ids as `tokenizer(text, padding="max_length", max_length=77, truncation=True)` gives them: start token,
    /// at most `max_len - 2` text tokens, end token, then padding.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let raw = self.encode_raw(text)?;
        let keep = raw.len().min(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos as i64);
        ids.extend(raw[..keep].iter().map(|&i| i as i64));
        ids.push(self.eos as i64);
        ids.resize(self.max_len, self.pad as i64);
        Ok(ids)
    }

    /// The text's tokens alone: no start/end token, no padding, no truncation.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token strings for ids (`<unknown id N>` for ids outside the vocabulary).
    pub fn tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| self.inner.id_to_token(i).unwrap_or_else(|| format!("<unknown id {i}>"))).collect()
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// Sequence length including start and end tokens (77).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of entries including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
