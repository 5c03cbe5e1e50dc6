//! `cargo xtask compare --openvino`: one CFG UNet step (full-size random SD1.5, batch 2, bf16) of sd-rs against
//! OpenVINO's CPU plugin and PyTorch eager (bf16, channels_last), on the same cores, as a table anyone can re-run.
//!
//! Each implementation runs in its own process, alternated in rounds (ours, OpenVINO, PyTorch, ours, …) so that
//! background load hits all three alike:
//! - ours: `benches/examples/unet_step.rs` (`--dtype bf16 --channels-last`, what `sd generate` runs);
//! - OpenVINO: `scripts/bench/openvino_unet.py`, the same diffusers UNet through `openvino.convert_model`,
//!   compiled with a bf16 inference-precision hint; its first round also checks the f32 IR against PyTorch f32
//!   (max abs error ≤ 1e-4) and fails the comparison if it does not match;
//! - PyTorch: `scripts/bench/unet_step.py --dtype bf16 --channels-last`.
//!
//! Every row is also given as a share of the host's bf16 matmul peak (`scripts/bench/matmul_peak.py`, torch at the
//! same thread count): the step's FLOPs (`scripts/bench/unet_flops.py`: convolution, linear and attention matmuls
//! counted from the real shapes) over seconds per step over the peak. That says how far each is from what the
//! cores can do, which a ratio between two implementations cannot.
//!
//! usage: cargo xtask compare --openvino [--size 512] [--rounds 3] [--repeats 3] [--threads 2] [--model DIR]
//!        [--no-build]
//!
//! OpenVINO is not part of the fixtures stack: `scripts/bench/requirements-openvino.txt` pins it and this task
//! installs it into the fixtures virtualenv on first use (with `SD_BENCH_PYTHON`, it asks you to). CI never runs
//! this task.

use crate::compare::{
    bench_example, bench_python, ensure_random_model, json_number, loadavg, median, spread, unet_step_line,
};
use crate::util::{root, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Opts {
    size: u32,
    rounds: usize,
    repeats: usize,
    threads: u32,
    model: Option<PathBuf>,
    build: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { size: 512, rounds: 3, repeats: 3, threads: 2, model: None, build: true };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => o.size = value()?.parse().context("--size")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--threads" => o.threads = value()?.parse().context("--threads")?,
            "--model" => o.model = Some(PathBuf::from(value()?)),
            "--no-build" => o.build = false,
            other => bail!(
                "compare --openvino: unknown argument {other} (expected --size, --rounds, --repeats, --threads, \
                 --model, --no-build)"
            ),
        }
    }
    if o.size == 0 || !o.size.is_multiple_of(8) || o.rounds == 0 || o.repeats == 0 || o.threads == 0 {
        bail!("compare --openvino: --size must be a positive multiple of 8, --rounds, --repeats, --threads positive");
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let root = root();
    let step_bin = bench_example(&root, "unet_step", o.build)?;
    let py = bench_python(&root)?;
    let openvino = ensure_openvino(&root, &py)?;
    let model = match &o.model {
        Some(m) => m.clone(),
        None => ensure_random_model(&root, &py, "sd15")?,
    };
    let (m, size, threads, repeats) =
        (model.to_string_lossy().into_owned(), o.size.to_string(), o.threads.to_string(), o.repeats.to_string());
    let load_start = loadavg();
    let script = |name: &str| root.join("scripts/bench").join(name);

    let flops_line = tagged_line(
        Command::new(&py).arg(script("unet_flops.py")).args(["--model", &m, "--size", &size]),
        "UNET_FLOPS ",
    )?;
    let flops = json_number(&flops_line, "flops")?;
    let tflop = |kind: &str| json_number(&flops_line, &format!("{kind}_flops")).map(|f| f / 1e12);
    let parts = (tflop("conv")?, tflop("linear")?, tflop("attention")?);
    let peak_line =
        tagged_line(Command::new(&py).arg(script("matmul_peak.py")).args(["--threads", &threads]), "MATMUL_PEAK ")?;
    let peak_gflops = json_number(&peak_line, "peak_gflops")?;

    let common = ["--model", &m, "--size", &size, "--dtype", "bf16", "--repeats", &repeats, "--threads", &threads];
    let mut rows = [
        Row::new("sd-rs", "`examples/unet_step --channels-last`"),
        Row::new(&format!("OpenVINO {openvino}"), "`openvino_unet.py` (bf16 precision hint)"),
        Row::new("PyTorch eager, channels_last", "`unet_step.py --channels-last` (diffusers, SDPA)"),
    ];
    let mut check = None;
    for round in 0..o.rounds {
        eprintln!("round {} of {}", round + 1, o.rounds);
        rows[0].add(&unet_step_line(Command::new(&step_bin).args(common).arg("--channels-last"))?)?;
        let mut ov = Command::new(&py);
        ov.arg(script("openvino_unet.py")).args(common);
        if round == 0 {
            // Once per run is enough: a converted IR does not change between rounds, and the check costs a
            // PyTorch f32 step plus an f32 compile.
            ov.arg("--check");
        }
        let line = unet_step_line(&mut ov)?;
        if round == 0 {
            check = Some(json_number(&line, "max_abs_diff_f32")?);
        }
        rows[1].add(&line)?;
        rows[2]
            .add(&unet_step_line(Command::new(&py).arg(script("unet_step.py")).args(common).arg("--channels-last"))?)?;
    }

    println!(
        "\nUNet step: full-size SD1.5 UNet ({}), {} px, batch 2 (one CFG step), bf16, {} threads; rounds: {}, \
         alternated; timed steps per process: {}, after 1 warm-up",
        model.display(),
        o.size,
        o.threads,
        o.rounds,
        o.repeats
    );
    println!("host: {}", host_line());
    println!(
        "step: {:.3} TFLOP (convolutions {:.3}, linear {:.3}, attention {:.3}: unet_flops.py) | bf16 matmul peak: \
         {peak_gflops:.0} GFLOP/s (torch, {} threads: matmul_peak.py) | OpenVINO f32 vs PyTorch f32: max abs diff {} \
         | load average at start: {load_start}, at end: {}\n",
        flops / 1e12,
        parts.0,
        parts.1,
        parts.2,
        o.threads,
        check.map_or("–".to_string(), |d| format!("{d:.2e}")),
        loadavg()
    );
    println!(
        "| implementation | s per step, median (min–max) | steps | time / sd-rs | share of bf16 matmul peak | how |"
    );
    println!("|---|---|---|---|---|---|");
    let ours = median(&rows[0].times);
    for r in &rows {
        let (med, lo, hi) = spread(&r.times);
        let share = flops / med / (peak_gflops * 1e9);
        println!(
            "| {} | {med:.3} ({lo:.3}–{hi:.3}) | {} | {:.2} | {:.0} % | {} |",
            r.name,
            r.times.len(),
            med / ours,
            share * 100.0,
            r.how
        );
    }
    Ok(())
}

/// One implementation's timed steps over all rounds.
struct Row {
    name: String,
    how: String,
    times: Vec<f64>,
}

impl Row {
    fn new(name: &str, how: &str) -> Self {
        Row { name: name.to_string(), how: how.to_string(), times: Vec::new() }
    }

    /// Every timed step of one process (`"times": [...]` of its `UNET_STEP` line), not only its median: the table's
    /// min–max is then over single steps.
    fn add(&mut self, line: &str) -> Result<()> {
        self.times.extend(json_numbers(line, "times")?);
        Ok(())
    }
}

/// The OpenVINO version pinned in `scripts/bench/requirements-openvino.txt`, installed into the bench Python when
/// that is the fixtures virtualenv. A user's own `SD_BENCH_PYTHON` is never changed behind their back.
fn ensure_openvino(root: &Path, py: &Path) -> Result<String> {
    let req = root.join("scripts/bench/requirements-openvino.txt");
    let text = std::fs::read_to_string(&req).with_context(|| format!("cannot read {}", req.display()))?;
    let pinned = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("openvino=="))
        .with_context(|| format!("{} pins no openvino==VERSION", req.display()))?
        .trim()
        .to_string();
    let installed = || {
        Command::new(py)
            .args(["-c", "import importlib.metadata as m; print(m.version('openvino'))"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if installed().as_deref() == Some(pinned.as_str()) {
        return Ok(pinned);
    }
    let (py_s, req_s) = (py.to_str().context("path")?, req.to_str().context("path")?);
    if std::env::var_os("SD_BENCH_PYTHON").is_some() {
        bail!(
            "SD_BENCH_PYTHON ({}) lacks openvino=={pinned}: install it with `{py_s} -m pip install -r {req_s}`",
            py.display()
        );
    }
    eprintln!(
        "xtask: installing openvino=={pinned} (scripts/bench/requirements-openvino.txt) into the fixtures virtualenv \
         for this comparison only; tests and fixtures never need it"
    );
    // The fixtures pins as constraints: OpenVINO's own requirements (numpy) must not move the reference stack.
    let constraints = root.join("scripts/fixtures/requirements.txt");
    run_cmd(root, py_s, &["-m", "pip", "install", "-q", "-r", req_s, "-c", constraints.to_str().context("path")?])?;
    match installed() {
        Some(v) if v == pinned => Ok(pinned),
        other => bail!("after installing, {py_s} reports openvino {other:?}, not {pinned}"),
    }
}

/// Run a script and return its stdout line that starts with `tag` (stdout and stderr shown on failure).
pub(crate) fn tagged_line(cmd: &mut Command, tag: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    let line = text.lines().find(|l| l.starts_with(tag)).with_context(|| format!("{cmd:?} printed no {tag}line"))?;
    eprintln!("{line}");
    Ok(line.to_string())
}

/// The numbers of `"key": [a, b, …]` in a flat JSON line.
pub(crate) fn json_numbers(line: &str, key: &str) -> Result<Vec<f64>> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat).with_context(|| format!("no {key} in {line}"))? + pat.len();
    let rest = line[at..].trim_start().strip_prefix('[').with_context(|| format!("{key} is not a list in {line}"))?;
    let end = rest.find(']').with_context(|| format!("{key}: unclosed list in {line}"))?;
    rest[..end]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().with_context(|| format!("{key} in {line}")))
        .collect()
}

/// CPU model, core count and the flags that decide bf16 speed, from `/proc/cpuinfo`.
pub(crate) fn host_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"];
    let have: Vec<&str> = wanted.iter().copied().filter(|w| flags.split_whitespace().any(|f| f == *w)).collect();
    let amx = if have.iter().any(|f| f.starts_with("amx")) { "" } else { ", no AMX" };
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    format!(
        "{}, {cpus} logical CPUs, flags: {}{amx}",
        field("model name").unwrap_or_else(|| "unknown CPU".into()),
        if have.is_empty() { "none of avx2/avx512/amx".to_string() } else { have.join(" ") }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_times_list() -> Result<()> {
        let line = r#"UNET_STEP {"impl": "openvino", "median_s": 2.5, "times": [2.4, 2.5, 2.61], "threads": 2}"#;
        assert_eq!(json_numbers(line, "times")?, vec![2.4, 2.5, 2.61]);
        assert!(json_numbers(line, "median_s").is_err());
        assert!(json_numbers(r#"{"times": []}"#, "times")?.is_empty());
        Ok(())
    }

    #[test]
    fn flags_are_validated() {
        assert!(parse(&["--size".into(), "500".into()]).is_err());
        assert!(parse(&["--rounds".into(), "0".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        assert!(parse(&["--size".into(), "256".into(), "--no-build".into()]).is_ok_and(|o| o.size == 256 && !o.build));
    }
}
