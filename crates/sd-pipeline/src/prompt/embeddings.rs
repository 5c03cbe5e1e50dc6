//! Textual-inversion embeddings used by name in prompts (A1111 `modules/textual_inversion/textual_inversion.py`,
//! diffusers `load_textual_inversion`).
//!
//! Accepted files: safetensors with one tensor (A1111/kohya `emb_params`, or any single key, as A1111's "diffuser
//! concept" branch; diffusers `learned_embeds.safetensors` `{token: vector(s)}`) or with `clip_l` + `clip_g`
//! (SDXL); and the same as pickled `.pt`/`.bin` files plus A1111's `string_to_param` layout, read without running
//! code ([`super::embedding_pt`]). An embedding is used as `name` = its file name without extension, like A1111. Its name is
//! matched on token ids, longest name first; the matched tokens are replaced by as many placeholder slots as the
//! embedding has vectors, and the vectors replace the token embeddings there.
//!
//! Not supported: embeddings stored inside PNG/WebP images, and old files whose `string_to_param` is a pickled
//! `ParameterDict` module (refused by the safe reader with a message). A folder given explicitly must load completely: a file that cannot be read is an error naming it, while
//! an embedding made for another model family (wrong width) is skipped and reported, as A1111 skips it.

use super::chunks::{EmbeddingFinder, EmbeddingMatch};
use super::encoder::TextEncoder;
use anyhow::{anyhow, bail, Context, Result};
use sd_core::weights::SafeTensorsFiles;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One embedding's vectors, `[vectors, width]` per text encoder of the model it fits.
pub struct Embedding {
    pub name: String,
    pub path: PathBuf,
    pub vectors: Vec<Tensor>,
}

impl Embedding {
    pub fn num_vectors(&self) -> usize {
        self.vectors.first().map(|v| v.size()[0] as usize).unwrap_or(0)
    }
}

/// Embeddings usable with one model, plus a name lookup per text encoder.
#[derive(Default)]
pub struct EmbeddingSet {
    pub items: Vec<Embedding>,
    /// Per encoder: first token id of a name → (name token ids, embedding index), longest name first.
    lookups: Vec<NameLookup>,
}

/// First token id of a name → (name token ids, embedding index), longest name first.
type NameLookup = HashMap<u32, Vec<(Vec<u32>, usize)>>;

/// The tensors of one embedding file, before they are matched to a model's encoders.
#[derive(Debug)]
pub enum EmbeddingFile {
    Single(Tensor),
    Sdxl { clip_l: Tensor, clip_g: Tensor },
}

/// Read an embedding file and classify it.
pub fn read_embedding_file(path: &Path) -> Result<EmbeddingFile> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if ext != "safetensors" {
        return super::embedding_pt::read_pickled_embedding(path);
    }
    let files = SafeTensorsFiles::open(&[path.to_path_buf()])?;
    let names: Vec<String> = files.names().map(str::to_string).collect();
    let load = |name: &str| -> Result<Tensor> {
        let t = files.load(name)?.to_kind(Kind::Float);
        match t.dim() {
            1 => Ok(t.unsqueeze(0)),
            2 => Ok(t),
            _ => bail!(
                "{}: tensor `{name}` has shape {:?}; expected [vectors, width] or [width]",
                path.display(),
                t.size()
            ),
        }
    };
    if names.iter().any(|n| n == "clip_l") && names.iter().any(|n| n == "clip_g") {
        let (clip_l, clip_g) = (load("clip_l")?, load("clip_g")?);
        if clip_l.size()[0] != clip_g.size()[0] {
            bail!("{}: clip_l has {} vectors but clip_g has {}", path.display(), clip_l.size()[0], clip_g.size()[0]);
        }
        return Ok(EmbeddingFile::Sdxl { clip_l, clip_g });
    }
    match names.as_slice() {
        [one] => Ok(EmbeddingFile::Single(load(one)?)),
        [] => bail!("{} holds no tensors", path.display()),
        _ => bail!(
            "{} holds {} tensors ({}); an embedding file has one tensor, or `clip_l` + `clip_g` for SDXL",
            path.display(),
            names.len(),
            names.join(", ")
        ),
    }
}

impl EmbeddingSet {
    /// Load every `.safetensors`, `.pt` and `.bin` file in `dir` for these encoders. Returns the set and
    /// a note per skipped embedding (made for another model family).
    pub fn load_dir(dir: &Path, encoders: &[Box<dyn TextEncoder>]) -> Result<(Self, Vec<String>)> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the embeddings folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
                matches!(ext.as_str(), "safetensors" | "pt" | "bin")
                    && p.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
            .collect();
        paths.sort();
        let mut set = EmbeddingSet { items: Vec::new(), lookups: vec![HashMap::new(); encoders.len()] };
        let mut skipped = Vec::new();
        for path in paths {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let file = read_embedding_file(&path)?;
            match match_encoders(&file, encoders) {
                Ok(vectors) => set.add(Embedding { name, path, vectors }, encoders)?,
                Err(why) => skipped.push(format!("{}: {why}", path.display())),
            }
        }
        Ok((set, skipped))
    }

    fn add(&mut self, emb: Embedding, encoders: &[Box<dyn TextEncoder>]) -> Result<()> {
        let index = self.items.len();
        for (lookup, enc) in self.lookups.iter_mut().zip(encoders) {
            let ids = enc.tokenize(&emb.name).with_context(|| format!("tokenizing embedding name `{}`", emb.name))?;
            let Some(&first) = ids.first() else {
                bail!("embedding {} has a name that gives no tokens", emb.path.display());
            };
            let entry = lookup.entry(first).or_default();
            entry.push((ids, index));
            // Stable sort: among equally long names the one loaded first wins, as in A1111.
            entry.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        }
        self.items.push(emb);
        Ok(())
    }

    pub fn names(&self) -> Vec<&str> {
        self.items.iter().map(|e| e.name.as_str()).collect()
    }

    /// The finder chunking uses for text encoder `encoder`.
    pub fn finder(&self, encoder: usize) -> Finder<'_> {
        Finder { set: self, encoder }
    }
}

/// The file's vectors for each encoder, or why it does not fit: like A1111, a one-tensor embedding fits a model
/// with one text encoder of the same width, and a `clip_l` + `clip_g` file fits SDXL's pair.
fn match_encoders(file: &EmbeddingFile, encoders: &[Box<dyn TextEncoder>]) -> std::result::Result<Vec<Tensor>, String> {
    let widths: Vec<i64> = encoders.iter().map(|e| e.hidden_size()).collect();
    let candidates: Vec<&Tensor> = match file {
        EmbeddingFile::Single(t) => vec![t],
        EmbeddingFile::Sdxl { clip_l, clip_g } => vec![clip_l, clip_g],
    };
    let have: Vec<i64> = candidates.iter().map(|t| t.size()[1]).collect();
    if have != widths {
        let kind =
            if candidates.len() == 2 { "an SDXL (clip_l + clip_g) embedding" } else { "a single-encoder embedding" };
        return Err(format!(
            "{kind} with vectors of width {have:?}; this model's text encoders take {widths:?} (made for another model family)"
        ));
    }
    Ok(candidates.into_iter().map(|t| t.shallow_clone()).collect())
}

pub struct Finder<'a> {
    set: &'a EmbeddingSet,
    encoder: usize,
}

impl EmbeddingFinder for Finder<'_> {
    fn find(&self, tokens: &[u32], position: usize) -> Option<EmbeddingMatch> {
        let candidates = self.set.lookups.get(self.encoder)?.get(tokens.get(position)?)?;
        candidates.iter().find(|(ids, _)| tokens[position..].starts_with(ids)).map(|(ids, index)| EmbeddingMatch {
            embedding: *index,
            vectors: self.set.items[*index].num_vectors(),
            name_tokens: ids.len(),
        })
    }
}

/// The `(position in the 77, vectors)` replacements of one chunk for encoder `encoder`.
pub fn chunk_replacements(
    set: &EmbeddingSet,
    fixes: &[super::chunks::ChunkFix],
    encoder: usize,
    seq_len: usize,
) -> Result<Vec<(usize, Tensor)>> {
    fixes
        .iter()
        .map(|fix| {
            let emb =
                set.items.get(fix.embedding).ok_or_else(|| anyhow!("internal: unknown embedding {}", fix.embedding))?;
            let vectors = emb
                .vectors
                .get(encoder)
                .ok_or_else(|| anyhow!("embedding `{}` has no vectors for encoder {encoder}", emb.name))?;
            // A1111 skips the start token (offset + 1) and cuts vectors that would run past the sequence.
            let position = fix.offset + 1;
            let n = (vectors.size()[0]).min(seq_len.saturating_sub(position) as i64);
            Ok((position, vectors.narrow(0, 0, n)))
        })
        .collect()
}
