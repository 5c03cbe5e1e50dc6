//! The models `sd serve` can switch between: the `--model` it started with and every diffusers folder or
//! `.safetensors`/`.ckpt` checkpoint directly inside `--models-dir`, named as AUTOMATIC1111 names checkpoints
//! (`title` = `"name [hash]"`, `model_name` = name without extension).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Most models a `--models-dir` may list (each entry costs a directory read; a folder of thousands is a mistake).
pub const MAX_MODELS: usize = 1000;

#[derive(Debug)]
pub struct ModelEntry {
    /// What [`sd_pipeline::loader::StableDiffusion::load`] takes: a folder, a checkpoint file or a repo id.
    pub spec: String,
    /// A1111's `model_name`: folder name, or file name without extension.
    pub model_name: String,
    /// File or folder name as listed (A1111's title before the hash).
    pub file_name: String,
    /// The A1111 short hash, computed on first use (hashing a multi-GB file takes seconds; it is cached on disk).
    hash: OnceLock<Option<String>>,
    /// Whether it is an SD3 folder, read from its configs on first use (every job asks).
    sd3: OnceLock<bool>,
}

impl ModelEntry {
    fn new(spec: String) -> Self {
        let p = Path::new(&spec);
        let file_name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.clone());
        let model_name = if p.is_file() {
            p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| file_name.clone())
        } else {
            file_name.clone()
        };
        Self { spec, model_name, file_name, hash: OnceLock::new(), sd3: OnceLock::new() }
    }

    /// The weights file A1111's hash is taken of: the checkpoint itself, or a folder's UNet weights (an SD3
    /// folder's transformer weights).
    pub fn hashed_file(&self) -> Option<PathBuf> {
        let p = Path::new(&self.spec);
        if p.is_file() {
            Some(p.to_path_buf())
        } else {
            sd_core::model_dir::find_weights(&p.join("unet"), None)
                .or_else(|_| sd_core::model_dir::find_weights(&p.join("transformer"), None))
                .ok()
        }
    }

    /// Native image size from the configs (UNet or SD3 transformer `sample_size` × 2^(VAE levels − 1)), without
    /// loading weights.
    pub fn native_size(&self) -> Option<i64> {
        let root = Path::new(&self.spec);
        let read = |c: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(root.join(c).join("config.json")).ok()?).ok()
        };
        let sample = read("unet").or_else(|| read("transformer"))?.get("sample_size")?.as_i64()?;
        let levels = read("vae")?.get("block_out_channels")?.as_array()?.len() as u32;
        Some(sample * 2i64.pow(levels.saturating_sub(1)))
    }

    /// Whether this is a diffusers SD3 / SD3.5 folder (read from its configs once) or a single-file SD3 checkpoint
    /// (read from its tensor names once).
    pub fn is_sd3(&self) -> bool {
        *self.sd3.get_or_init(|| {
            let p = Path::new(&self.spec);
            if sd_pipeline::single_file::is_single_file(&self.spec) {
                return sd_pipeline::single_file::is_sd3_file(p);
            }
            p.is_dir() && sd_core::model_dir::ModelDir::open_folder(p).is_ok_and(|d| sd_pipeline::sd3::is_sd3(&d))
        })
    }

    /// The short hash (blocking: may read the whole file once).
    pub fn hash(&self) -> Option<String> {
        self.hash.get_or_init(|| self.hashed_file().and_then(|f| sd_pipeline::hash_cache::short_hash(&f))).clone()
    }

    /// A1111's title, `"name [hash]"` (blocking, see [`Self::hash`]).
    pub fn title(&self) -> String {
        match self.hash() {
            Some(h) => format!("{} [{h}]", self.file_name),
            None => self.file_name.clone(),
        }
    }

    /// Whether a client's name for a model means this one: the title with or without its hash, the model name,
    /// or the spec it was loaded from.
    pub fn matches(&self, q: &str) -> bool {
        let q = q.trim();
        let base = q.rsplit_once(" [").map(|(b, h)| (b, h.trim_end_matches(']'))).filter(|(_, h)| !h.contains(' '));
        match base {
            Some((b, h)) => (b == self.file_name || b == self.model_name) && self.hash().is_none_or(|mine| mine == h),
            None => q == self.file_name || q == self.model_name || q == self.spec,
        }
    }
}

#[derive(Debug)]
pub struct Catalog {
    pub entries: Vec<ModelEntry>,
    pub models_dir: Option<PathBuf>,
}

impl Catalog {
    /// `primary` first, then the models found in `models_dir` (sorted by name).
    pub fn scan(primary: &str, models_dir: Option<&Path>) -> Result<Self> {
        let mut entries = vec![ModelEntry::new(primary.to_string())];
        if let Some(dir) = models_dir {
            if !dir.is_dir() {
                bail!("--models-dir {} is not a folder", dir.display());
            }
            let mut found = Vec::new();
            for item in std::fs::read_dir(dir)? {
                let path = item?.path();
                let is_model = if path.is_dir() {
                    path.join("model_index.json").is_file()
                } else {
                    matches!(path.extension().and_then(|e| e.to_str()), Some("safetensors" | "ckpt"))
                };
                if is_model {
                    found.push(path);
                }
                if found.len() > MAX_MODELS {
                    bail!("--models-dir {} holds more than {MAX_MODELS} models", dir.display());
                }
            }
            found.sort();
            let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            };
            for p in found {
                if !same(&p, Path::new(primary)) {
                    entries.push(ModelEntry::new(p.to_string_lossy().into_owned()));
                }
            }
        }
        Ok(Self { entries, models_dir: models_dir.map(Path::to_path_buf) })
    }

    /// The entry a client's model name means (blocking: may hash).
    pub fn find(&self, q: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.matches(q))
    }

    /// Names to suggest in an error.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.model_name.clone()).collect()
    }
}
