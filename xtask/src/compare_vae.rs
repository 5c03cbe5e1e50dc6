//! `cargo xtask compare --vae`: one VAE decode (full-size random SD1.5 VAE, `[1, 4, size/8, size/8]` latents,
//! bf16) of sd-rs against diffusers, channels-last and in diffusers' default layout, on the same cores.
//!
//! Each implementation runs in its own process, alternated in rounds (ours, diffusers channels_last, diffusers
//! NCHW, ours, …) so background load hits all alike:
//! - ours: `benches/examples/vae_decode.rs --dtype bf16 --channels-last` (what `sd generate` runs);
//! - diffusers: `scripts/bench/vae_decode.py --dtype bf16`, with and without `--channels-last`.
//!
//! Every row is also a share of the host's bf16 matmul peak: the decoder's FLOPs (counted by PyTorch's
//! `FlopCounterMode` on a meta-device copy, `vae_decode.py --flops-only`) over seconds per decode over the peak
//! (`matmul_peak.py`). The decoder is 98 % 3×3 convolutions, so that share says how much room any implementation
//! has left on the host, which a ratio between two of them cannot.
//!
//! usage: cargo xtask compare --vae [--sizes 512,1024] [--rounds 2] [--repeats 2] [--threads 2] [--model DIR]
//!        [--no-build]

use crate::compare::{bench_example, bench_python, ensure_random_model, json_number, loadavg, median, spread};
use crate::compare_openvino::{host_line, json_numbers, tagged_line};
use crate::util::root;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

struct Opts {
    sizes: Vec<u32>,
    rounds: usize,
    repeats: usize,
    threads: u32,
    model: Option<PathBuf>,
    build: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { sizes: vec![512, 1024], rounds: 2, repeats: 2, threads: 2, model: None, build: true };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                o.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().with_context(|| format!("--sizes: {s:?} is not a number")))
                    .collect::<Result<_>>()?
            }
            "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--threads" => o.threads = value()?.parse().context("--threads")?,
            "--model" => o.model = Some(PathBuf::from(value()?)),
            "--no-build" => o.build = false,
            other => bail!(
                "compare --vae: unknown argument {other} (expected --sizes, --rounds, --repeats, --threads, --model, \
                 --no-build)"
            ),
        }
    }
    if o.sizes.is_empty() || o.sizes.iter().any(|s| *s == 0 || !s.is_multiple_of(8) || *s > 2048) {
        bail!("compare --vae: --sizes must be multiples of 8 from 8 to 2048");
    }
    if o.rounds == 0 || o.repeats == 0 || o.threads == 0 {
        bail!("compare --vae: --rounds, --repeats and --threads must be positive");
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let root = root();
    let bin = bench_example(&root, "vae_decode", o.build)?;
    let py = bench_python(&root)?;
    let model = match &o.model {
        Some(m) => m.clone(),
        None => ensure_random_model(&root, &py, "sd15")?,
    };
    let script = root.join("scripts/bench/vae_decode.py");
    let (m, threads, repeats) = (model.to_string_lossy().into_owned(), o.threads.to_string(), o.repeats.to_string());
    let load_start = loadavg();
    let peak_line = tagged_line(
        Command::new(&py).arg(root.join("scripts/bench/matmul_peak.py")).args(["--threads", &threads]),
        "MATMUL_PEAK ",
    )?;
    let peak_gflops = json_number(&peak_line, "peak_gflops")?;
    let mut tables = Vec::new();
    for &size in &o.sizes {
        let size_s = size.to_string();
        let gflop = json_number(
            &tagged_line(
                Command::new(&py).arg(&script).args(["--model", &m, "--size", &size_s, "--flops-only"]),
                "VAE_DECODE ",
            )?,
            "gflop",
        )?;
        let common =
            ["--model", &m, "--size", &size_s, "--dtype", "bf16", "--repeats", &repeats, "--threads", &threads];
        let mut rows = [
            ("sd-rs", "`examples/vae_decode --channels-last`", Vec::new()),
            ("diffusers, channels_last", "`vae_decode.py --channels-last`", Vec::new()),
            ("diffusers, default (NCHW)", "`vae_decode.py`", Vec::new()),
        ];
        for round in 0..o.rounds {
            eprintln!("{size} px: round {} of {}", round + 1, o.rounds);
            let ours = tagged_line(Command::new(&bin).args(common).arg("--channels-last"), "VAE_DECODE ")?;
            rows[0].2.extend(json_numbers(&ours, "times")?);
            let cl = tagged_line(Command::new(&py).arg(&script).args(common).arg("--channels-last"), "VAE_DECODE ")?;
            rows[1].2.extend(json_numbers(&cl, "times")?);
            let plain = tagged_line(Command::new(&py).arg(&script).args(common), "VAE_DECODE ")?;
            rows[2].2.extend(json_numbers(&plain, "times")?);
        }
        let mut t = format!(
            "\nVAE decode, {size} px ({gflop:.0} GFLOP: vae_decode.py --flops-only), bf16, batch 1\n\n\
             | implementation | s per decode, median (min–max) | decodes | time / diffusers channels_last | share \
             of bf16 matmul peak | how |\n|---|---|---|---|---|---|\n"
        );
        let reference = median(&rows[1].2);
        for (name, how, times) in &rows {
            let (med, lo, hi) = spread(times);
            let share = gflop / med / peak_gflops;
            t.push_str(&format!(
                "| {name} | {med:.3} ({lo:.3}–{hi:.3}) | {} | {:.2} | {:.0} % | {how} |\n",
                times.len(),
                med / reference,
                share * 100.0
            ));
        }
        tables.push(t);
    }
    println!(
        "\nVAE decode: full-size SD1.5 VAE ({}), {} threads; rounds: {}, alternated; timed decodes per process: {}, \
         after 1 warm-up",
        model.display(),
        o.threads,
        o.rounds,
        o.repeats
    );
    println!("host: {}", host_line());
    println!(
        "bf16 matmul peak: {peak_gflops:.0} GFLOP/s (torch, {} threads: matmul_peak.py) | load average at start: \
         {load_start}, at end: {}",
        o.threads,
        loadavg()
    );
    for t in tables {
        print!("{t}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn flags_are_validated() {
        assert!(parse(&["--sizes".into(), "500".into()]).is_err());
        assert!(parse(&["--sizes".into(), "512,x".into()]).is_err());
        assert!(parse(&["--rounds".into(), "0".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        let o = parse(&["--sizes".into(), "256, 512".into(), "--no-build".into()]);
        assert!(o.is_ok_and(|o| o.sizes == [256, 512] && !o.build));
    }
}
