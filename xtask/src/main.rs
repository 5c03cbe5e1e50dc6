//! `cargo xtask <task>`: the project's own automation, runnable on a fresh Debian machine.
//!
//! | task | what |
//! |---|---|
//! | `setup [--cuda]` | LibTorch 2.13.0 from PyPI wheels into `.libtorch/` (`--cuda`: the CUDA build and its NVIDIA libraries), the CLIP vocabulary and sample images into `.sd-data/` |
//! | `test` | setup, `check`, then every test, doctest and bench (in test mode) of the workspace |
//! | `check` | the checks CI runs before the tests: rustfmt, `tidy`, clippy, rustdoc, all with warnings as errors |
//! | `tidy` | project rules read from the sources: no `unwrap`/`expect` in library code, module maps, file length |
//! | `demo` | setup, release build, then the main job |
//! | `fixtures` | regenerate the committed PyTorch reference fixtures (Python venv under `target/pyenv`) |
//! | `gpu-check [--quick]` | on a CUDA GPU: sd-rs vs diffusers parity (f32), speed and memory (f16), offload modes |
//! | `compare` | sd-rs vs diffusers speed and peak memory on a full-size random-weight SD1.5 (`--quick`: 256 px) |
//! | `compare --vae` | the bf16 VAE decode of sd-rs and diffusers, as shares of the host's bf16 matmul peak |
//! | `compare --openvino` | the bf16 UNet step of sd-rs, OpenVINO and PyTorch eager, as shares of the host's bf16 matmul peak |
//! | `parity --full` | full-size random-weight SD1.5 (`--sdxl`: and SDXL) against diffusers, f32, max abs error ≤ 1e-3 |
//! | `convert-weights` | release-build `sd` and run `sd convert ARGS…` (single-file checkpoint → diffusers folder) |
//! | `fuzz --minutes N` | mutation fuzzer over `fixtures/malformed/` for every reader of untrusted input |
//! | `train-demo` | train the `sd-tiny-shapes` demo model into `models/sd-tiny-shapes/` and score its prompt adherence |
//!
//! This crate uses only std and anyhow, because it must build before LibTorch exists.

mod compare;
mod compare_openvino;
mod compare_vae;
mod fixtures;
mod gpu_check;
mod parity;
mod setup;
mod setup_cuda;
mod tidy;
mod util;

use anyhow::{bail, Context, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        print_help();
        bail!("no task given");
    };
    let rest = &args[1..];
    match task.as_str() {
        "setup" => setup::run_args(rest),
        "test" => test(rest),
        "check" => check(rest),
        "tidy" => tidy::run(rest),
        "demo" => demo(rest),
        "fixtures" => fixtures::run(rest),
        "convert-weights" => convert_weights(rest),
        "compare" => compare::run(rest),
        "gpu-check" => gpu_check::run(rest),
        "parity" => parity::run(rest),
        "train-demo" => train_demo(rest),
        "fuzz" => fuzz(rest),
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => {
            print_help();
            bail!("unknown task `{other}`")
        }
    }
}

fn print_help() {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         tasks:\n  \
         setup [--cuda]  install LibTorch 2.13.0 (from PyPI wheels; --cuda: with CUDA) and data files into this checkout\n  \
         test       setup, the checks of `check`, then run every test of the workspace\n  \
         check      cargo fmt --check, tidy, clippy -D warnings, rustdoc -D warnings (what CI runs before tests)\n  \
         tidy       no unwrap/expect in library code, lib.rs module maps complete, no over-long file\n  \
         demo       setup, build in release mode and run the main job\n  \
         fixtures   regenerate reference fixtures with PyTorch/diffusers (needs network access to PyPI)\n  \
         compare [--quick]  time sd-rs against diffusers (UNet step, whole txt2img; wall time, peak RSS)\n  \
         compare --openvino [--size 512] [--rounds 3] [--threads 2]  UNet step: sd-rs, OpenVINO, PyTorch eager\n  \
         compare --vae [--sizes 512,1024] [--rounds 2]  VAE decode: sd-rs and diffusers, shares of the matmul peak\n  \
         gpu-check [--quick]  on a CUDA GPU: sd-rs vs diffusers parity (f32), speed, GPU memory, offload (f16)\n  \
         parity --full [--sdxl]  full-size random-weight models against diffusers (slow; not in CI)\n  \
         convert-weights ARGS  build `sd` (release) and run `sd convert ARGS` (see `sd convert --help`)\n  \
         train-demo [VAE_STEPS UNET_STEPS]  train models/sd-tiny-shapes on procedural shapes, then score it\n  \
         fuzz [--minutes N] [--seed S] [--release]  mutation-fuzz every reader of untrusted input (stable toolchain)"
    );
}

fn test(extra: &[String]) -> Result<()> {
    let root = util::root();
    // A full test build takes about 2 GB of target/ plus 0.5 GB of LibTorch; a full disk otherwise shows up as a
    // linker crash deep in the build.
    if let Some(free) = util::free_disk_gb(&root).filter(|&gb| gb < 3.0) {
        eprintln!(
            "xtask: warning: only {free:.1} GB free on the disk holding {}; the test build needs about 2.5 GB",
            root.display()
        );
    }
    setup::run()?;
    check(&[])?;
    let mut args = vec!["test", "--workspace", "--all-targets"];
    args.extend(extra.iter().map(|s| s.as_str()));
    util::cargo(&root, &args)?;
    // Doctests are not part of --all-targets.
    util::cargo(&root, &["test", "--workspace", "--doc"])?;
    Ok(())
}

/// The habits CI enforces before it runs a test, cheapest first so a formatting slip fails in seconds:
/// formatting (`rustfmt.toml`), `tidy`, clippy on every target with warnings as errors, and rustdoc with warnings
/// as errors (a broken intra-doc link fails).
fn check(extra: &[String]) -> Result<()> {
    if !extra.is_empty() {
        bail!("`cargo xtask check` takes no arguments");
    }
    let root = util::root();
    util::cargo(&root, &["fmt", "--all", "--check"]).context("code is not formatted: run `cargo fmt --all`")?;
    tidy::run(&[])?;
    // clippy and rustdoc build torch-sys, which needs LibTorch.
    setup::run()?;
    util::cargo(&root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    util::cargo_env(&root, &["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    if !extra.is_empty() {
        bail!("`cargo xtask demo` takes no arguments; run `target/release/sd generate --help` for your own settings");
    }
    setup::run()?;
    let root = util::root();
    util::cargo(&root, &["build", "--release", "-p", "sd-cli"])?;
    let sd = root.join("target/release/sd");
    let sd = sd.to_str().unwrap_or("sd");
    util::run_cmd(&root, sd, &["doctor"])?;
    // The main job: text-to-image end to end with sd-tiny-shapes, the small model sd-rs trained itself
    // (`cargo xtask train-demo`), on a prompt it never saw as such in training; then read the labels back as any
    // user could. The model draws 32×32 px; --upscale 8 enlarges it so the invisible watermark fits.
    let model = root.join("models/sd-tiny-shapes");
    let model = model.to_str().unwrap_or("models/sd-tiny-shapes");
    let out = "outputs/demo-{seed}.png";
    let args = vec![
        "generate",
        "a yellow circle on a blue background",
        "--model",
        model,
        "--steps",
        "20",
        "--seed",
        "42",
        "--width",
        "32",
        "--height",
        "32",
        "--cfg-scale",
        "1.5",
        "--upscale",
        "8",
        "--visible-label",
        "--output",
        out,
        "--overwrite",
    ];
    util::run_cmd(&root, sd, &args)?;
    util::run_cmd(&root, sd, &["inspect", "outputs/demo-42.png"])
}

/// `cargo xtask convert-weights ARGS…` is `sd convert ARGS…` with a release build of `sd`.
fn convert_weights(extra: &[String]) -> Result<()> {
    let root = util::root();
    util::cargo(&root, &["build", "--release", "-p", "sd-cli"])?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("target"));
    let sd = target.join("release").join("sd");
    let mut args: Vec<&str> = vec!["convert"];
    args.extend(extra.iter().map(|s| s.as_str()));
    let cwd = std::env::current_dir().unwrap_or(root);
    util::run_cmd(&cwd, sd.to_str().unwrap_or("sd"), &args)
}

/// `cargo xtask fuzz [--minutes N] [--seed S] [--release]`: sd-pipeline's `fuzz` example (see its docs). Crashes
/// are minimised into `fixtures/malformed/crashes/`, where the `robustness` test replays them.
fn fuzz(extra: &[String]) -> Result<()> {
    let root = util::root();
    let mut args = vec!["run", "-p", "sd-pipeline", "--example", "fuzz"];
    if extra.iter().any(|a| a == "--release") {
        args.push("--release");
    }
    args.push("--");
    args.extend(extra.iter().filter(|a| *a != "--release").map(|s| s.as_str()));
    util::cargo(&root, &args).map_err(|e| {
        anyhow::anyhow!("{e:#}\n(an abort that could not be caught leaves its input in target/fuzz/<reader>.<ext>)")
    })
}

/// `cargo xtask train-demo [VAE_STEPS UNET_STEPS]`: scaffold, VAE, UNet (sd-train's `train_demo` example), then the
/// held-out prompt-adherence score (`shapes_eval`).
fn train_demo(extra: &[String]) -> Result<()> {
    setup::run()?;
    let root = util::root();
    let work = root.join("target/sd-tiny-shapes-work");
    let (work, out) = (work.to_str().unwrap_or("target/sd-tiny-shapes-work"), "models/sd-tiny-shapes");
    let mut args = vec!["run", "--release", "-p", "sd-train", "--example", "train_demo", "--", work, out];
    args.extend(extra.iter().map(|s| s.as_str()));
    util::cargo(&root, &args)?;
    util::cargo(
        &root,
        &["run", "--release", "-p", "sd-train", "--example", "shapes_eval", "--", out, "32", "20", "auto"],
    )
}
