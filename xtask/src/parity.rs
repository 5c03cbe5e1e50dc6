//! `cargo xtask parity --full` (not run in CI): sd-rs against diffusers/transformers on full-size random-weight
//! SD1.5 (and, with `--sdxl`, SDXL; with `--sd3`, SD3.5 Medium's MMDiT-X transformer and 16-channel VAE) folders
//! under `target/bench/`. Python writes reference outputs for fixed inputs (`scripts/bench/parity_full.py`), then
//! `benches/examples/parity_full.rs` (release) compares our models and prints the max abs errors (f32, tolerance
//! 1e-3). The committed tiny-model fixtures are checked by the ordinary tests; this catches what only appears at
//! full size (head counts, depths, shapes). `--sd3` also writes the SD3.5 Medium folder as one original-layout
//! checkpoint and checks `sd convert` against diffusers' `from_single_file`, tensor for tensor
//! (`scripts/bench/sd3_single_file_full.py`).

use crate::compare::{bench_python, ensure_random_model, release_dir};
use crate::util::{cargo, root, run_cmd};
use anyhow::{bail, Context, Result};

pub fn run(args: &[String]) -> Result<()> {
    let mut families = vec!["sd15"];
    let mut full = false;
    let mut latent = "16".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--full" => full = true,
            "--sdxl" => families.push("sdxl"),
            "--sd3" => families.push("sd35m"),
            "--latent" => latent = it.next().context("--latent needs a value")?.clone(),
            other => bail!("parity: unknown argument {other}"),
        }
    }
    if !full {
        bail!("parity: only `cargo xtask parity --full` exists (the tiny-model parity runs in `cargo test`)");
    }
    let root = root();
    let py = bench_python(&root)?;
    cargo(&root, &["build", "--release", "-p", "sd-benches", "--example", "parity_full"])?;
    let bin = release_dir(&root).join("examples/parity_full");
    for family in families {
        let model = ensure_random_model(&root, &py, family)?;
        let reference = root.join("target/bench").join(format!("parity-{family}-{latent}.safetensors"));
        let (m, r) = (model.to_str().context("path")?, reference.to_str().context("path")?);
        if !reference.exists() {
            let script = root.join("scripts/bench/parity_full.py");
            run_cmd(
                &root,
                py.to_str().context("path")?,
                &[script.to_str().context("path")?, "--model", m, "--out", r, "--latent", &latent],
            )?;
        }
        run_cmd(&root, bin.to_str().context("path")?, &["--model", m, "--reference", r])?;
        if family == "sd35m" {
            // the same folder as one original-layout checkpoint: `sd convert` against diffusers' from_single_file
            cargo(&root, &["build", "--release", "-p", "sd-cli"])?;
            let sd = release_dir(&root).join("sd");
            let work = root.join("target/bench/sd3-single-file");
            let script = root.join("scripts/bench/sd3_single_file_full.py");
            run_cmd(
                &root,
                py.to_str().context("path")?,
                &[
                    script.to_str().context("path")?,
                    "--model",
                    m,
                    "--sd",
                    sd.to_str().context("path")?,
                    "--work",
                    work.to_str().context("path")?,
                ],
            )?;
        }
    }
    Ok(())
}
