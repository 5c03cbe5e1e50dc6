//! `cargo xtask gpu-check`: sd-rs against diffusers on a CUDA GPU (parity in f32, speed and memory in f16, the
//! offload modes), on the full-size random-weight SD1.5 and SDXL folders `cargo xtask compare` uses.
//!
//! It needs a CUDA LibTorch (`cargo xtask setup --cuda`, or a `LIBTORCH` of your own) and a GPU the driver
//! exposes; the Python side is the fixtures virtualenv (its `torch==2.13.0` from PyPI is the CUDA build) or
//! `$SD_BENCH_PYTHON`. The measuring is `scripts/bench/gpu_check.py`; its tables go to stdout and every number to
//! `target/bench/gpu-check.json`. No test calls this: the test suite never needs a GPU.
//!
//! usage: cargo xtask gpu-check [--quick] [--no-build] [--steps N] [--repeats N]
//!        cargo xtask gpu-check --dry-run    (no GPU: every step on the CPU with the demo model, to check the script)

use crate::compare::{bench_python, ensure_random_model, release_dir};
use crate::util::{cargo, root};
use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    let (mut quick, mut build, mut dry_run, mut passthrough) = (false, true, false, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-build" => build = false,
            "--dry-run" => dry_run = true,
            "--steps" | "--repeats" => {
                passthrough.push(a.clone());
                passthrough.push(it.next().with_context(|| format!("{a} needs a value"))?.clone());
            }
            other => {
                bail!("gpu-check: unknown argument {other} (expected --quick, --no-build, --steps N, --repeats N)")
            }
        }
    }
    let root = root();
    let user_libtorch = std::env::var_os("LIBTORCH_USE_PYTORCH").is_some()
        || std::env::var("LIBTORCH").is_ok_and(|l| std::path::Path::new(&l) != root.join(".libtorch"));
    if !dry_run && !user_libtorch && !crate::setup_cuda::installed(&root.join(".libtorch")) {
        bail!("gpu-check needs the CUDA build of LibTorch: run `cargo xtask setup --cuda` first");
    }
    if build {
        cargo(&root, &["build", "--release", "-p", "sd-cli"])?;
    }
    let sd = release_dir(&root).join("sd");
    let doctor = Command::new(&sd).args(["doctor", "--json"]).output().context("cannot run sd doctor")?;
    let report = String::from_utf8_lossy(&doctor.stdout);
    if !dry_run && !report.contains("\"available\": true") {
        bail!("sd sees no CUDA GPU (see `{} doctor`): gpu-check has nothing to measure here", sd.display());
    }
    let py = bench_python(&root)?;
    let sd15 = if dry_run { root.join("models/sd-tiny-shapes") } else { ensure_random_model(&root, &py, "sd15")? };
    let mut cmd = Command::new(&py);
    cmd.arg(root.join("scripts/bench/gpu_check.py")).arg("--sd").arg(&sd).arg("--sd15").arg(&sd15);
    if dry_run {
        cmd.arg("--dry-run");
    } else if quick {
        cmd.arg("--quick");
    } else {
        cmd.arg("--sdxl").arg(ensure_random_model(&root, &py, "sdxl")?);
    }
    std::fs::create_dir_all(root.join("target/bench"))?;
    cmd.arg("--json").arg(root.join("target/bench/gpu-check.json")).args(&passthrough);
    let status = cmd.status().context("cannot run scripts/bench/gpu_check.py")?;
    if !status.success() {
        bail!("gpu_check.py failed ({status})");
    }
    Ok(())
}
