//! `cargo xtask compare`: sd-rs against diffusers on a full-size random-weight SD1.5 (or, with `--family sdxl`,
//! SDXL) folder, same CPU, runs alternated (ours, theirs, ours, …) so background load hits both sides alike.
//!
//! Measured: one CFG UNet step (median of several, `benches/examples/unet_step.rs` vs `scripts/bench/unet_step.py`),
//! then whole-process txt2img (`sd generate` vs `scripts/bench/diffusers_txt2img.py`) under `scripts/bench/measure.py`
//! (wall seconds, peak RSS). Prints a markdown table with medians, ratios (ours / theirs) and the load average.
//!
//! usage: cargo xtask compare [--family sd15|sdxl|sd3|sd35m|sd35l] [--quick] [--sizes 256,512] [--dtypes f32,bf16]
//!        [--steps 20] [--repeats 3] [--unet-repeats 3] [--model DIR] [--skip-unet] [--skip-txt2img] [--no-build]
//!        [--no-t5] [--skip-diffusers]
//!        (`--family sdxl` defaults to 1024 px in bf16, SDXL's native size and the fast CPU dtype; the SD3 families
//!        (SD3 Medium, SD3.5 Medium, SD3.5 Large) to 512 px, 4 steps, bf16, whole process only: one step of
//!        SD3.5 Large at 1024 px takes minutes on two cores. `--no-t5` runs both sides without T5 (diffusers with
//!        `text_encoder_3=None`); `--skip-diffusers` measures sd-rs alone, for a model diffusers cannot hold:
//!        SD3.5 Large with T5 is 27.7 GB of bf16 weights, which diffusers keeps loaded together)
//!        cargo xtask compare --openvino [--size 512] [--rounds 3] [--threads 2] [--no-build]
//!        (the UNet step against OpenVINO and PyTorch eager, as a share of the bf16 matmul peak: see
//!        [`crate::compare_openvino`])
//!        cargo xtask compare --vae [--sizes 512,1024] [--rounds 2] [--threads 2] [--no-build]
//!        (VAE decode: sd-rs against diffusers, as shares of the bf16 matmul peak; see [`crate::compare_vae`])
//!
//! `SD_BENCH_PYTHON=/path/to/python` uses an existing Python environment instead of the fixtures virtualenv.

use crate::fixtures::ensure_venv;
use crate::util::{cargo, root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Opts {
    family: String,
    sizes: Vec<u32>,
    dtypes: Vec<String>,
    steps: u32,
    repeats: usize,
    unet_repeats: usize,
    model: Option<PathBuf>,
    unet: bool,
    txt2img: bool,
    build: bool,
    no_t5: bool,
    diffusers: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        family: "sd15".into(),
        sizes: vec![256, 512],
        dtypes: vec!["f32".into(), "bf16".into()],
        steps: 20,
        repeats: 3,
        unet_repeats: 3,
        model: None,
        unet: true,
        txt2img: true,
        build: true,
        no_t5: false,
        diffusers: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => {
                o.sizes = vec![256];
                o.repeats = 1;
                o.unet_repeats = 2;
            }
            "--sizes" => {
                o.sizes = value()?.split(',').map(|s| s.trim().parse().context("--sizes")).collect::<Result<_>>()?
            }
            "--dtypes" => o.dtypes = value()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--steps" => o.steps = value()?.parse().context("--steps")?,
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--unet-repeats" => o.unet_repeats = value()?.parse().context("--unet-repeats")?,
            "--model" => o.model = Some(PathBuf::from(value()?)),
            "--family" => o.family = value()?.to_string(),
            "--skip-unet" => o.unet = false,
            "--skip-txt2img" => o.txt2img = false,
            "--no-build" => o.build = false,
            "--no-t5" => o.no_t5 = true,
            "--skip-diffusers" => o.diffusers = false,
            other => bail!("compare: unknown argument {other}"),
        }
    }
    if o.dtypes.iter().any(|d| d != "f32" && d != "bf16") {
        bail!("compare: --dtypes takes f32 and/or bf16");
    }
    match o.family.as_str() {
        "sd15" => {}
        "sdxl" => {
            // SDXL's defaults unless the flags chose: its native 1024 px, in bf16 (f32 SDXL at 1024 px is hours).
            if !args.iter().any(|a| a == "--sizes" || a == "--quick") {
                o.sizes = vec![1024];
            }
            if !args.iter().any(|a| a == "--dtypes") {
                o.dtypes = vec!["bf16".into()];
            }
        }
        "sd3" | "sd35m" | "sd35l" => {
            if !args.iter().any(|a| a == "--sizes" || a == "--quick") {
                o.sizes = vec![512];
            }
            if !args.iter().any(|a| a == "--dtypes") {
                o.dtypes = vec!["bf16".into()];
            }
            if !args.iter().any(|a| a == "--steps") {
                o.steps = 4;
            }
            if !args.iter().any(|a| a == "--repeats" || a == "--quick") {
                o.repeats = 1;
            }
            // no UNet: the transformer's step is measured inside the whole process
            o.unet = false;
        }
        other => bail!("compare: --family {other}: expected sd15, sdxl, sd3, sd35m or sd35l"),
    }
    if o.no_t5 && !o.family.starts_with("sd3") {
        bail!("compare: --no-t5 is for the SD3 families");
    }
    if !o.diffusers && o.unet {
        bail!("compare: --skip-diffusers measures the whole process only; add --skip-unet");
    }
    Ok(o)
}

/// The Python with the reference stack: `$SD_BENCH_PYTHON` when set (an existing environment, e.g. offline),
/// else the fixtures virtualenv (created or updated from `scripts/fixtures/requirements.txt`).
pub fn bench_python(root: &Path) -> Result<PathBuf> {
    match std::env::var_os("SD_BENCH_PYTHON") {
        Some(p) => Ok(PathBuf::from(p)),
        None => ensure_venv(root),
    }
}

/// The release binaries' folder (honours CARGO_TARGET_DIR like cargo does).
pub fn release_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("release")
}

/// `target/bench/random-{family}` (sd15, sdxl), created with `scripts/bench/random_model.py` when missing.
pub fn ensure_random_model(root: &Path, py: &Path, family: &str) -> Result<PathBuf> {
    let dir = root.join("target/bench").join(format!("random-{family}"));
    if !dir.join("model_index.json").exists() {
        let script = root.join("scripts/bench/random_model.py");
        let status = Command::new(py).arg(&script).args(["--family", family, "--out"]).arg(&dir).status()?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    Ok(dir)
}

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--openvino") {
        let rest: Vec<String> = args.iter().filter(|a| *a != "--openvino").cloned().collect();
        return crate::compare_openvino::run(&rest);
    }
    if args.iter().any(|a| a == "--vae") {
        let rest: Vec<String> = args.iter().filter(|a| *a != "--vae").cloned().collect();
        return crate::compare_vae::run(&rest);
    }
    let o = parse(args)?;
    let root = root();
    let py = bench_python(&root)?;
    let model = match &o.model {
        Some(m) => m.clone(),
        None => ensure_random_model(&root, &py, &o.family)?,
    };
    if o.build {
        cargo(&root, &["build", "--release", "-p", "sd-cli"])?;
        cargo(&root, &["build", "--release", "-p", "sd-benches", "--example", "unet_step"])?;
    }
    let rel = release_dir(&root);
    let (sd, step_bin) = (rel.join("sd"), rel.join("examples/unet_step"));
    let out_dir = root.join("target/bench/out");
    std::fs::create_dir_all(&out_dir)?;
    let m = model.to_string_lossy().into_owned();
    let measure = root.join("scripts/bench/measure.py").to_string_lossy().into_owned();
    let sd3 = o.family.starts_with("sd3");
    let load_start = loadavg();
    let mut rows = Vec::new();
    for dtype in &o.dtypes {
        for &size in &o.sizes {
            if o.unet {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                for _ in 0..o.unet_repeats.max(1) {
                    let common = ["--model", &m, "--size", &size.to_string(), "--dtype", dtype, "--repeats", "3"]
                        .map(String::from);
                    ours.push(unet_step(Command::new(&step_bin).args(&common))?);
                    let script = root.join("scripts/bench/unet_step.py");
                    theirs.push(unet_step(Command::new(&py).arg(script).args(&common))?);
                }
                rows.push(Row::new(format!("UNet step (batch 2) {size} px"), dtype, &ours, &theirs, None));
            }
            if o.txt2img {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                let (mut rss_o, mut rss_t) = (Vec::new(), Vec::new());
                for r in 0..o.repeats.max(1) {
                    let png = out_dir.join(format!("sd-{dtype}-{size}-{r}.png")).to_string_lossy().into_owned();
                    let steps = o.steps.to_string();
                    let s = size.to_string();
                    let sd_args: Vec<String> = [
                        "generate",
                        "--model",
                        &m,
                        "a lighthouse at dawn, oil painting",
                        "--steps",
                        &steps,
                        "-W",
                        &s,
                        "-H",
                        &s,
                        "--dtype",
                        dtype,
                        "--seed",
                        "0",
                        "--sampler",
                        "euler",
                        "--no-watermark",
                        "--safety",
                        "off",
                        "-o",
                        &png,
                        "--overwrite",
                        "-q",
                    ]
                    .map(String::from)
                    .to_vec();
                    let mut sd_args = sd_args;
                    if o.no_t5 {
                        sd_args.push("--no-t5".into());
                    }
                    let (w, rss) = measured(&py, &measure, &sd.to_string_lossy(), &sd_args)?;
                    ours.push(w);
                    rss_o.push(rss);
                    if !o.diffusers {
                        continue;
                    }
                    let png = out_dir.join(format!("diffusers-{dtype}-{size}-{r}.png")).to_string_lossy().into_owned();
                    let script = root.join("scripts/bench/diffusers_txt2img.py").to_string_lossy().into_owned();
                    let py_args: Vec<String> = [
                        script.as_str(),
                        "--model",
                        &m,
                        "--steps",
                        &steps,
                        "--size",
                        &s,
                        "--dtype",
                        dtype,
                        "--seed",
                        "0",
                        "--sampler",
                        // the model's own FlowMatchEulerDiscreteScheduler is what `--sampler euler` runs on SD3
                        if sd3 { "default" } else { "euler" },
                        "--out",
                        &png,
                    ]
                    .map(String::from)
                    .to_vec();
                    let mut py_args = py_args;
                    if o.no_t5 {
                        py_args.push("--no-t5".into());
                    }
                    let (w, rss) = measured(&py, &measure, &py.to_string_lossy(), &py_args)?;
                    theirs.push(w);
                    rss_t.push(rss);
                }
                let t5 = if o.no_t5 { ", no T5" } else { "" };
                let label = format!("txt2img {} steps {size} px (whole process{t5})", o.steps);
                rows.push(Row::new(label, dtype, &ours, &theirs, Some((median(&rss_o), median(&rss_t)))));
            }
        }
    }
    print_table(&rows, &load_start, &loadavg(), &model);
    Ok(())
}

struct Row {
    what: String,
    dtype: String,
    ours: f64,
    theirs: f64,
    n: usize,
    rss: Option<(f64, f64)>,
}

impl Row {
    fn new(what: String, dtype: &str, ours: &[f64], theirs: &[f64], rss: Option<(f64, f64)>) -> Self {
        Row { what, dtype: dtype.to_string(), ours: median(ours), theirs: median(theirs), n: ours.len(), rss }
    }
}

fn print_table(rows: &[Row], load_start: &str, load_end: &str, model: &Path) {
    println!("\nmodel: {} | load average at start: {load_start} | at end: {load_end}\n", model.display());
    println!("| measurement | dtype | runs | sd-rs (s) | diffusers (s) | time ratio | sd-rs peak RSS (MB) | diffusers peak RSS (MB) | RSS ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // a side that was not run (--skip-diffusers) has no median: its cells and ratios are dashes
    let num = |v: f64, digits: usize| if v.is_finite() { format!("{v:.digits$}") } else { "–".into() };
    for r in rows {
        let (ro, rt, rr) = match r.rss {
            Some((a, b)) => (num(a, 0), num(b, 0), num(a / b, 2)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {ro} | {rt} | {rr} |",
            r.what,
            r.dtype,
            r.n,
            num(r.ours, 3),
            num(r.theirs, 3),
            num(r.ours / r.theirs, 2)
        );
    }
}

/// The release build of the `sd-benches` example `name`: built now, or (with `build` false) required to exist.
pub fn bench_example(root: &Path, name: &str, build: bool) -> Result<PathBuf> {
    let bin = release_dir(root).join("examples").join(name);
    if build {
        cargo(root, &["build", "--release", "-p", "sd-benches", "--example", name])?;
    } else if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p sd-benches --example {name}`, or drop --no-build",
            bin.display()
        );
    }
    Ok(bin)
}

/// Median, minimum and maximum of a row's timings, for the `median (min–max)` cells.
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    (median(v), lo, hi)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

/// Run a unet-step program and read `median_s` from its `UNET_STEP {json}` line.
fn unet_step(cmd: &mut Command) -> Result<f64> {
    json_number(&unet_step_line(cmd)?, "median_s")
}

/// Run a unet-step program and return its `UNET_STEP {json}` line (also echoed to stderr).
pub fn unet_step_line(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("UNET_STEP "))
        .with_context(|| format!("{cmd:?} printed no UNET_STEP line"))?;
    eprintln!("{line}");
    Ok(line.to_string())
}

/// `measure.py -- PROGRAM ARGS`: (wall seconds, peak RSS MB) from its `MEASURE {json}` line on stderr.
fn measured(py: &Path, measure: &str, program: &str, args: &[String]) -> Result<(f64, f64)> {
    let out = Command::new(py).arg(measure).arg("--").arg(program).args(args).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{program} {}` failed ({}):\n{err}", args.join(" "), out.status);
    }
    let line = err.lines().find(|l| l.starts_with("MEASURE ")).context("measure.py printed no MEASURE line")?;
    if let Some(t) = err.lines().find(|l| l.starts_with("TIMINGS ")) {
        eprintln!("{t}");
    }
    eprintln!("{line}");
    Ok((json_number(line, "wall_s")?, json_number(line, "peak_rss_mb")?))
}

/// The number after `"key":` in a flat JSON line (xtask stays dependency-free).
pub fn json_number(line: &str, key: &str) -> Result<f64> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat).with_context(|| format!("no {key} in {line}"))? + pat.len();
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().with_context(|| format!("{key} in {line}"))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
