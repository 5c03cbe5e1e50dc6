//! Writing what training produces as ordinary diffusers folders (so `sd generate --model DIR` and diffusers'
//! `from_pretrained` both load them), plus the state needed to resume: `training_state.json` (step, seed, batch
//! geometry) and `training_state.safetensors` (AdamW moments, float32 master weights, EMA shadows).
//!
//! Components that training does not change are hard-linked from the base model where the file system allows it
//! (weights are never modified in place: every write goes through a temp file and a rename), copied otherwise.

use anyhow::{bail, Context, Result};
use sd_core::atomic::{write_atomic, Overwrite};
use sd_core::weights::{save_safetensors, SafeTensorsFiles};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_JSON: &str = "training_state.json";
pub const STATE_TENSORS: &str = "training_state.safetensors";

/// What `training_state.json` holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingState {
    /// Optimizer steps completed.
    pub step: u64,
    pub seed: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_steps: u64,
    pub ema: bool,
    pub train_text_encoder: bool,
}

/// A trained component: its config.json (as the base model had it) and its tensors.
pub struct TrainedComponent<'a> {
    pub name: &'a str,
    pub config: &'a serde_json::Value,
    pub weights_file: &'a str,
    pub tensors: Vec<(String, Tensor)>,
}

/// Write a diffusers folder at `dest`: the trained components, every other component of `base` linked or copied.
pub fn write_pipeline(base: &Path, dest: &Path, trained: Vec<TrainedComponent<'_>>) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    if let (Ok(a), Ok(b)) = (base.canonicalize(), dest.canonicalize()) {
        if a == b {
            bail!("the output folder {} is the base model itself; choose another --output", dest.display());
        }
    }
    let index_path = base.join("model_index.json");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&index_path).with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    let trained_names: Vec<&str> = trained.iter().map(|c| c.name).collect();
    for entry in std::fs::read_dir(base).with_context(|| format!("cannot list {}", base.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let src = entry.path();
        if trained_names.contains(&name.as_str()) || name.starts_with('.') || name.starts_with("training_state") {
            continue;
        }
        // Only the pipeline's components: not the checkpoints, samples or logs of a base that is itself a run.
        if src.is_dir() && index.get(&name).is_some() {
            link_or_copy_dir(&src, &dest.join(&name))?;
        } else if name == "model_index.json" || name.ends_with(".md") {
            link_or_copy(&src, &dest.join(&name))?;
        }
    }
    for c in trained {
        let dir = dest.join(c.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let text = serde_json::to_string_pretty(c.config)?;
        write_atomic(&dir.join("config.json"), Overwrite::Allow, text.as_bytes())?;
        // A stale weight file of another name (sharded index, fp16 variant) would shadow the new weights.
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if n != "config.json" && n != c.weights_file {
                let _ = std::fs::remove_file(&p);
            }
        }
        save_safetensors(&c.tensors, &dir.join(c.weights_file), None, Overwrite::Allow)?;
    }
    Ok(())
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_file(dst).with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn link_or_copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))? {
        let path = entry?.path();
        let target = dst.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            link_or_copy_dir(&path, &target)?;
        } else {
            link_or_copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Save the resumable state next to a checkpoint's model files.
pub fn write_state(dir: &Path, state: &TrainingState, tensors: &[(String, Tensor)]) -> Result<()> {
    save_safetensors(tensors, &dir.join(STATE_TENSORS), None, Overwrite::Allow)?;
    let text = serde_json::to_string_pretty(state)?;
    write_atomic(&dir.join(STATE_JSON), Overwrite::Allow, text.as_bytes())
}

/// Read a checkpoint's state: the JSON and every tensor of the safetensors file.
pub fn read_state(dir: &Path) -> Result<(TrainingState, BTreeMap<String, Tensor>)> {
    let json = dir.join(STATE_JSON);
    if !json.is_file() {
        bail!("{} is not a training checkpoint: {} is missing", dir.display(), json.display());
    }
    let text = std::fs::read_to_string(&json).with_context(|| format!("cannot read {}", json.display()))?;
    let state: TrainingState =
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid training state", json.display()))?;
    let files = SafeTensorsFiles::open(&[dir.join(STATE_TENSORS)])?;
    let mut tensors = BTreeMap::new();
    for name in files.names().map(String::from).collect::<Vec<_>>() {
        let t = files.load(&name)?;
        tensors.insert(name, t);
    }
    Ok((state, tensors))
}

/// `DIR/checkpoint-<step>`, diffusers' naming.
pub fn checkpoint_dir(output: &Path, step: u64) -> PathBuf {
    output.join(format!("checkpoint-{step}"))
}
