//! `cargo xtask fixtures [SCRIPT...]`: regenerate the committed reference data with the Python reference stack.
//!
//! A virtualenv under `target/pyenv` gets the pinned versions from `scripts/fixtures/requirements.txt`
//! (torch, diffusers, transformers, ...), then every `scripts/fixtures/gen_*.py` (or the ones named) runs from the
//! workspace root and writes below `fixtures/`. The scripts are deterministic: re-running them gives identical
//! files. Tests never run Python; they only read what this wrote.

use crate::util::{root, run_cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

pub fn run(only: &[String]) -> Result<()> {
    let root = root();
    let py = ensure_venv(&root)?;
    let scripts_dir = root.join("scripts/fixtures");
    let mut scripts: Vec<_> = fs::read_dir(&scripts_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("gen_") && n.ends_with(".py")
        })
        .collect();
    scripts.sort();
    if !only.is_empty() {
        scripts
            .retain(|p| only.iter().any(|o| p.file_stem().is_some_and(|s| s.to_string_lossy().contains(o.as_str()))));
        if scripts.is_empty() {
            bail!("no fixture script matches {only:?}");
        }
    }
    for s in scripts {
        run_cmd(&root, py.to_str().context("path")?, &[s.to_str().context("path")?])?;
    }
    Ok(())
}

/// Create (once) the fixtures virtualenv and return its python.
pub fn ensure_venv(root: &Path) -> Result<std::path::PathBuf> {
    let venv = root.join("target/pyenv");
    let py = venv.join("bin/python");
    let req = root.join("scripts/fixtures/requirements.txt");
    let nodeps = root.join("scripts/fixtures/requirements-nodeps.txt");
    let stamp = venv.join(".requirements");
    let mut wanted = fs::read_to_string(&req).with_context(|| format!("cannot read {}", req.display()))?;
    wanted.push_str(&fs::read_to_string(&nodeps).with_context(|| format!("cannot read {}", nodeps.display()))?);
    if py.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(py);
    }
    if !py.exists() {
        run_cmd(root, "python3", &["-m", "venv", venv.to_str().context("path")?])
            .context("cannot create the fixtures virtualenv (on Debian: apt-get install python3-venv)")?;
    }
    let py_s = py.to_str().context("path")?;
    run_cmd(root, py_s, &["-m", "pip", "install", "-q", "-r", req.to_str().context("path")?])?;
    run_cmd(root, py_s, &["-m", "pip", "install", "-q", "--no-deps", "-r", nodeps.to_str().context("path")?])?;
    fs::write(&stamp, wanted)?;
    Ok(py)
}
