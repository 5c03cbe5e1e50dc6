//! A1111's "Model hash" (first 10 hex digits of the weights' SHA-256), cached by path, size and mtime in
//! `$XDG_CACHE_HOME/sd-rs/hashes.json` (or `~/.cache/...`), because hashing a multi-GB file on every run would
//! cost seconds. A missing or unwritable cache only costs time, never an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sd-rs/hashes.json"))
}

/// A1111's "Model hash" of a loaded model: its checkpoint file's, or for a diffusers folder (which has none) its
/// UNet weights'.
pub fn model_hash(sd: &crate::loader::StableDiffusion) -> Option<String> {
    let hashed =
        sd.source_file.clone().or_else(|| sd_core::model_dir::find_weights(&sd.dir.root.join("unet"), None).ok());
    hashed.and_then(|p| short_hash(&p))
}

/// Short A1111 hash of `path`, or `None` if the file cannot be read.
pub fn short_hash(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let key = format!("{}|{}|{}", std::fs::canonicalize(path).ok()?.display(), meta.len(), mtime);
    let file = cache_file();
    let mut cache: BTreeMap<String, String> = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(h) = cache.get(&key) {
        return Some(h.clone());
    }
    let h = sd_core::hash::a1111_short_hash(path).ok()?;
    cache.insert(key, h.clone());
    if let (Some(f), Ok(text)) = (file, serde_json::to_string_pretty(&cache)) {
        let _ = f.parent().map(std::fs::create_dir_all);
        let _ = sd_core::atomic::write_atomic(&f, sd_core::atomic::Overwrite::Allow, text.as_bytes());
    }
    Some(h)
}
