//! Finding a model on disk: a diffusers folder (`model_index.json` + one folder per component) given by path,
//! or a Hugging Face repo id resolved offline in the local hub cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`, layout `models--org--name/snapshots/<rev>/`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A diffusers pipeline folder.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    /// Parsed `model_index.json`.
    pub index: serde_json::Value,
}

impl ModelDir {
    /// Open `spec`, which is either a folder or an `org/name` repo id present in the HF cache.
    pub fn open(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::open_folder(path);
        }
        if path.exists() {
            bail!("{spec} is a file, not a diffusers model folder (single-file checkpoints: see `sd convert`)");
        }
        let looks_like_repo = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
        if looks_like_repo {
            let searched = hf_cache_roots();
            for root in &searched {
                if let Some(snapshot) = find_snapshot(root, spec)? {
                    return Self::open_folder(&snapshot);
                }
            }
            let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "model `{spec}` is neither a folder nor a repo in the Hugging Face cache (looked in: {}). \
                 sd-rs never downloads: copy the diffusers folder here or fetch it with huggingface-cli on a connected machine",
                list.join(", ")
            );
        }
        bail!("model folder {spec} does not exist")
    }

    pub fn open_folder(root: &Path) -> Result<Self> {
        let index_path = root.join("model_index.json");
        if !index_path.exists() {
            bail!(
                "{} is not a diffusers model folder: model_index.json is missing (expected model_index.json plus \
                 unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                root.display()
            );
        }
        let text =
            std::fs::read_to_string(&index_path).with_context(|| format!("cannot read {}", index_path.display()))?;
        let index =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index_path.display()))?;
        Ok(Self { root: root.to_path_buf(), index })
    }

    /// Components listed in model_index.json with a non-null class (e.g. `unet`, `vae`, `text_encoder_2`).
    pub fn components(&self) -> Vec<String> {
        let Some(obj) = self.index.as_object() else { return Vec::new() };
        obj.iter()
            .filter(|(k, v)| !k.starts_with('_') && v.as_array().is_some_and(|a| a.len() == 2 && !a[1].is_null()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The class name model_index.json gives a component (`["diffusers", "UNet2DConditionModel"]` → the second).
    pub fn component_class(&self, name: &str) -> Option<String> {
        self.index.get(name)?.as_array()?.get(1)?.as_str().map(String::from)
    }

    /// The pipeline class (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, ...).
    pub fn pipeline_class(&self) -> Option<String> {
        self.index.get("_class_name")?.as_str().map(String::from)
    }

    /// Folder of a component, which must exist.
    pub fn component_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            bail!("{} is missing the `{name}/` folder (model_index.json lists it)", self.root.display());
        }
        Ok(dir)
    }

    /// Parsed `config.json` of a component (or `scheduler_config.json` for the scheduler).
    pub fn component_config(&self, name: &str) -> Result<serde_json::Value> {
        let dir = self.component_dir(name)?;
        let candidates = ["config.json", "scheduler_config.json", "preprocessor_config.json"];
        for c in candidates {
            let p = dir.join(c);
            if p.exists() {
                let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                return serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()));
            }
        }
        bail!("{} has no config.json", dir.display())
    }

    /// The weight file(s) of a component, preferring a given variant (`fp16`) when asked, then the plain file,
    /// then a sharded index. Only safetensors are loaded from folders (pickles go through conversion).
    pub fn component_weights(&self, name: &str, variant: Option<&str>) -> Result<PathBuf> {
        let dir = self.component_dir(name)?;
        find_weights(&dir, variant)
    }
}

/// The weights file in a component folder (see [`ModelDir::component_weights`]).
pub fn find_weights(dir: &Path, variant: Option<&str>) -> Result<PathBuf> {
    let stems = ["diffusion_pytorch_model", "model"];
    let mut tried = Vec::new();
    let mut variants: Vec<Option<&str>> = Vec::new();
    if let Some(v) = variant {
        variants.push(Some(v));
    }
    variants.push(None);
    if variant.is_none() {
        variants.push(Some("fp16"));
    }
    for v in &variants {
        for stem in stems {
            for suffix in ["safetensors", "safetensors.index.json"] {
                let name = match v {
                    Some(v) => format!("{stem}.{v}.{suffix}"),
                    None => format!("{stem}.{suffix}"),
                };
                let p = dir.join(&name);
                if p.exists() {
                    return Ok(p);
                }
                tried.push(name);
            }
        }
    }
    let has_bin = ["diffusion_pytorch_model.bin", "pytorch_model.bin"].iter().any(|f| dir.join(f).exists());
    if has_bin {
        bail!(
            "{} holds only PyTorch .bin weights; convert them to safetensors first (`cargo xtask convert-weights`)",
            dir.display()
        );
    }
    bail!("no weights in {} (looked for {})", dir.display(), tried.join(", "))
}

/// Hugging Face hub cache folders, in the order huggingface_hub resolves them.
pub fn hf_cache_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        roots.push(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        roots.push(PathBuf::from(p).join("hub"));
    }
    if let Ok(home) = std::env::var("HOME") {
        roots.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    roots
}

fn find_snapshot(root: &Path, repo: &str) -> Result<Option<PathBuf>> {
    let dir = root.join(format!("models--{}", repo.replace('/', "--")));
    if !dir.is_dir() {
        return Ok(None);
    }
    // refs/main names the snapshot the user last fetched; fall back to the only/first snapshot.
    let refs_main = dir.join("refs/main");
    if let Ok(rev) = std::fs::read_to_string(&refs_main) {
        let snap = dir.join("snapshots").join(rev.trim());
        if snap.is_dir() {
            return Ok(Some(snap));
        }
    }
    let snaps = dir.join("snapshots");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .with_context(|| format!("cannot list {}", snaps.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    Ok(entries.into_iter().next())
}
