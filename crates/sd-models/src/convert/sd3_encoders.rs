//! SD3 text encoders kept in files of their own, as ComfyUI users have them (`clip_l.safetensors`,
//! `clip_g.safetensors`, `t5xxl_fp16.safetensors`, `t5xxl_fp8_e4m3fn.safetensors`), joined to an MMDiT-only
//! checkpoint so that [`super::sd3::plan`] converts them as if the checkpoint held them.
//!
//! Those files hold a transformers state dict (`text_model.*` for CLIP, `shared.weight` + `encoder.*` for T5), bare
//! or under a wrapper prefix (`transformer.`, `clip_l.transformer.`, or the single file's own
//! `text_encoders.clip_l.transformer.`). The prefix is found from a marker key, every other key must share it, and
//! the keys are presented under the single file's prefix: one conversion path, one set of checks. A T5 file saved
//! with its decoder (a full `T5ForConditionalGeneration`) contributes only its encoder.

use super::sd3::{CLIP_G_PREFIX, CLIP_L_PREFIX, T5_PREFIX};
use super::source::TensorSource;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Which text encoder a separate file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoder {
    ClipL,
    ClipG,
    T5,
}

impl Encoder {
    /// The flag that passes such a file (for messages).
    pub fn flag(self) -> &'static str {
        match self {
            Self::ClipL => "--clip-l",
            Self::ClipG => "--clip-g",
            Self::T5 => "--t5",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::ClipL => "CLIP-L",
            Self::ClipG => "CLIP-G",
            Self::T5 => "T5",
        }
    }

    /// Where the single file keeps this encoder.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::ClipL => CLIP_L_PREFIX,
            Self::ClipG => CLIP_G_PREFIX,
            Self::T5 => T5_PREFIX,
        }
    }

    /// The key whose prefix is the file's wrapper prefix.
    fn marker(self) -> &'static str {
        match self {
            Self::ClipL | Self::ClipG => "text_model.embeddings.token_embedding.weight",
            Self::T5 => "shared.weight",
        }
    }
}

/// One tensor of the joined source: which source, and its name there.
type Origin = (usize, String);

/// The checkpoint and the separate encoder files as one [`TensorSource`].
pub struct WithEncoders<'a> {
    sources: Vec<&'a dyn TensorSource>,
    names: BTreeMap<String, Origin>,
    description: String,
    /// Keys of the separate files left out, with the reason (a T5 file's decoder).
    pub dropped: Vec<(String, &'static str)>,
}

/// Join `checkpoint` and the separate encoder `files` (each the encoder it is and its opened source). A file whose
/// encoder the checkpoint already holds, a file without the encoder's marker key, and a key outside the file's
/// prefix are refused, naming the file.
pub fn join<'a>(
    checkpoint: &'a dyn TensorSource,
    files: &[(Encoder, &'a Path, &'a dyn TensorSource)],
) -> Result<WithEncoders<'a>> {
    let mut names: BTreeMap<String, Origin> = checkpoint.names().into_iter().map(|n| (n.clone(), (0, n))).collect();
    let mut sources = vec![checkpoint];
    let mut description = checkpoint.describe();
    let mut dropped = Vec::new();
    for (i, (enc, path, src)) in files.iter().enumerate() {
        let shown = path.display();
        if files[..i].iter().any(|(e, _, _)| e == enc) {
            bail!("{} is given twice", enc.flag());
        }
        if names.keys().any(|n| n.starts_with(enc.prefix())) {
            bail!(
                "{} already holds a {} text encoder (`{}*`); leave out {} {shown}, or convert a checkpoint without one",
                checkpoint.describe(),
                enc.what(),
                enc.prefix(),
                enc.flag()
            );
        }
        let own = src.names();
        let marker = enc.marker();
        let wrapper = own
            .iter()
            .find_map(|n| n.strip_suffix(marker).filter(|p| p.is_empty() || p.ends_with('.')))
            .ok_or_else(|| {
                anyhow!(
                    "{} {shown} is not a transformers-layout {} text encoder: it has no `{marker}` (bare or under a \
                     prefix)",
                    enc.flag(),
                    enc.what()
                )
            })?
            .to_string();
        let index = sources.len();
        for n in own {
            let Some(local) = n.strip_prefix(wrapper.as_str()) else {
                bail!(
                    "{} {shown}: `{n}` is outside the encoder's `{wrapper}` prefix; a file of one {} text encoder \
                     was expected",
                    enc.flag(),
                    enc.what()
                );
            };
            if *enc == Encoder::T5 && (local.starts_with("decoder.") || local.starts_with("lm_head.")) {
                dropped.push((format!("{n} ({shown})"), "T5 decoder: SD3 uses only the encoder"));
                continue;
            }
            names.insert(format!("{}{local}", enc.prefix()), (index, n));
        }
        sources.push(*src);
        description.push_str(&format!(" + {shown}"));
    }
    Ok(WithEncoders { sources, names, description, dropped })
}

impl WithEncoders<'_> {
    fn origin(&self, name: &str) -> Option<(&dyn TensorSource, &str)> {
        let (i, n) = self.names.get(name)?;
        Some((self.sources[*i], n.as_str()))
    }
}

impl TensorSource for WithEncoders<'_> {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.origin(name).and_then(|(s, n)| s.shape(n))
    }
    fn kind(&self, name: &str) -> Option<Kind> {
        self.origin(name).and_then(|(s, n)| s.kind(n))
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let (s, n) = self.origin(name).ok_or_else(|| anyhow!("{}: no tensor `{name}`", self.description))?;
        s.load(n)
    }
    fn global_step(&self) -> Option<i64> {
        self.sources[0].global_step()
    }
    fn describe(&self) -> String {
        self.description.clone()
    }
}
