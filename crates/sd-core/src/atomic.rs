//! Atomic file writing: data goes to a hidden temp file in the destination folder, is flushed, then renamed.
//! A crash or an error therefore leaves either the old file or nothing, never a truncated image or weight file.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do when the destination already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    Refuse,
    Allow,
}

/// Temp path next to `dest` (same file system, so the final rename is atomic).
pub fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    dest.with_file_name(tmp)
}

/// Write `bytes` to `dest` atomically, creating parent folders.
pub fn write_atomic(dest: &Path, overwrite: Overwrite, bytes: &[u8]) -> Result<()> {
    write_atomic_with(dest, overwrite, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`] but lets the caller stream into the temp file.
pub fn write_atomic_with(dest: &Path, overwrite: Overwrite, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    if overwrite == Overwrite::Refuse && dest.exists() {
        bail!("{} already exists (pass --overwrite to replace it)", dest.display());
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    let tmp = temp_path_for(dest);
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&mut f)?;
        f.sync_all().with_context(|| format!("cannot flush {}", tmp.display()))?;
        drop(f);
        if overwrite == Overwrite::Refuse && dest.exists() {
            bail!("{} appeared while writing (pass --overwrite to replace it)", dest.display());
        }
        fs::rename(&tmp, dest).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
