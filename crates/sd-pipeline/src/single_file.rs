//! `--model model.safetensors|.ckpt`: a single-file (LDM-layout) checkpoint is loaded through the same mapping as
//! `sd convert`. It is converted once — streamed tensor by tensor, written atomically — into a cache folder
//! (`$XDG_CACHE_HOME/sd-rs/converted/<name>-<hash>`, else `~/.cache/...`) keyed by the file's SHA-256, and then
//! loaded like any diffusers folder. Later runs reuse the folder, so the cost is paid once and memory stays near
//! one tensor during conversion. A single-file SD3 / SD3.5 checkpoint (`sd_models::convert::sd3`) becomes a
//! diffusers SD3 folder the same way; what the file lacks (text encoders, the T5 tokenizer) is printed once.

use anyhow::{anyhow, Context, Result};
use sd_models::clip::ClipTokenizer;
use sd_models::convert::{self, writer::WriteOptions, ConvertOptions};
use std::path::{Path, PathBuf};

const EXTENSIONS: &[&str] = &["safetensors", "ckpt", "pt", "pth"];

/// Whether `spec` names a checkpoint file rather than a folder or a repo id.
pub fn is_single_file(spec: &str) -> bool {
    let p = Path::new(spec);
    p.is_file()
        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether the single file at `path` is an SD3 / SD3.5 checkpoint (judged from its tensor names).
pub fn is_sd3_file(path: &Path) -> bool {
    convert::open(path).is_ok_and(|src| convert::sd3::detect(&src.names()))
}

/// The diffusers folder for checkpoint `path`, converting it on first use. `config_dir` supplies component
/// configs for architectures the canonical SD1/SD2/SDXL configs do not describe.
pub fn converted_folder(path: &Path, config_dir: Option<&Path>) -> Result<PathBuf> {
    let hash = sd_core::hash::sha256_file(path)?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let stem: String =
        stem.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let dest = cache_root()?.join(format!("{stem}-{}", &hash[..16]));
    if dest.join("model_index.json").exists() {
        return Ok(dest);
    }
    eprintln!("converting {} once into {} (reused next time)", path.display(), dest.display());
    let opts = ConvertOptions { config_dir: config_dir.map(Path::to_path_buf), ..ConvertOptions::default() };
    let src = convert::open(path)?;
    let wopts = WriteOptions {
        dtype: None,
        overwrite: false,
        config_dir: opts.config_dir.clone(),
        vocab: Some(ClipTokenizer::default_bpe_path()),
        pipeline: true,
    };
    if convert::sd3::detect(&src.names()) {
        let plan = convert::sd3::plan(src.as_ref(), config_dir, false)
            .with_context(|| format!("reading {}", path.display()))?;
        for note in &plan.notes {
            eprintln!("note: {note}");
        }
        convert::writer::write_sd3_folder(&plan, src.as_ref(), &dest, &wopts, |_, _, _| {})
            .with_context(|| format!("converting {} into {}", path.display(), dest.display()))?;
        return Ok(dest);
    }
    let plan =
        convert::plan_checkpoint(src.as_ref(), None, &opts).with_context(|| format!("reading {}", path.display()))?;
    convert::writer::write_folder(&plan, &[src.as_ref()], &dest, &wopts, |_, _, _| {})
        .with_context(|| format!("converting {} into {}", path.display(), dest.display()))?;
    Ok(dest)
}

fn cache_root() -> Result<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|b| b.join("sd-rs/converted"))
        .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set: nowhere to cache the converted checkpoint"))
}
