//! Peak memory of loading a big safetensors file through `VarBuilder`, against the file size.
//!
//! `cargo run -p sd-core --release --example weights_rss -- <file> [f32|bf16] [megabytes]`
//! creates `<file>` (f32 tensors of 1280×2048, about `megabytes` MB, default 500) in a child process if it does not
//! exist, then loads every tensor as a model would (keeping them all) and prints VmHWM (peak resident set, which
//! counts mapped file pages too) from /proc/self/status. Linux only.

use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

const ROWS: usize = 1280;
const COLS: usize = 2048;

fn status_kb(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let kb = rest.trim_start_matches(':').trim().trim_end_matches("kB").trim();
            return kb.parse().with_context(|| format!("parsing {field} `{kb}`"));
        }
    }
    bail!("{field} not in /proc/self/status")
}

/// Stream a safetensors file of `count` f32 tensors without holding them in memory.
fn make(path: &Path, count: usize) -> Result<()> {
    let bytes_each = ROWS * COLS * 4;
    let mut header = serde_json::Map::new();
    for i in 0..count {
        let start = i * bytes_each;
        header.insert(
            format!("blocks.{i}.weight"),
            serde_json::json!({"dtype": "F32", "shape": [ROWS, COLS], "data_offsets": [start, start + bytes_each]}),
        );
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(text.as_bytes())?;
    let mut row = vec![0u8; COLS * 4];
    for i in 0..count {
        for r in 0..ROWS {
            for (c, chunk) in row.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&(((i * 7 + r * 3 + c) % 1000) as f32 * 1e-3).to_le_bytes());
            }
            f.write_all(&row)?;
        }
    }
    f.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 3 && args[1] == "--make" {
        let mb: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(500);
        return make(Path::new(&args[2]), (mb * 1_000_000).div_ceil(ROWS * COLS * 4));
    }
    let path = PathBuf::from(args.get(1).context("usage: weights_rss <file> [f32|bf16] [megabytes]")?);
    let kind = match args.get(2).map(String::as_str).unwrap_or("f32") {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => bail!("unknown dtype {other}"),
    };
    if !path.exists() {
        let mb = args.get(3).cloned().unwrap_or_else(|| "500".into());
        let status = std::process::Command::new(std::env::current_exe()?).args(["--make", &args[1], &mb]).status()?;
        if !status.success() {
            bail!("creating {} failed", path.display());
        }
    }
    let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    // Touch LibTorch once so its own start-up memory is in the baseline.
    let _warm = tch::Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let base = status_kb("VmRSS")?;

    let vb = VarBuilder::from_safetensors(std::slice::from_ref(&path), kind, Device::Cpu)?;
    let names: Vec<String> = (0..).map(|i| format!("blocks.{i}.weight")).take_while(|n| vb.contains(n)).collect();
    let kept: Vec<tch::Tensor> = names.iter().map(|n| vb.get(&[ROWS as i64, COLS as i64], n)).collect::<Result<_>>()?;
    vb.finish("weights_rss", &[])?;
    let held_mb: f64 = kept.iter().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as f64 / 1e6).sum();

    let peak = status_kb("VmHWM")?;
    let now = status_kb("VmRSS")?;
    let peak_mb = (peak - base) as f64 / 1024.0 * 1.024;
    println!(
        "file {file_mb:.0} MB, loaded {} tensors as {kind:?} = {held_mb:.0} MB; baseline RSS {:.0} MB; \
         peak above baseline {peak_mb:.0} MB ({:.2}× file, {:.2}× loaded); RSS after load {:.0} MB above baseline",
        kept.len(),
        base as f64 / 1024.0 * 1.024,
        peak_mb / file_mb,
        peak_mb / held_mb,
        (now - base) as f64 / 1024.0 * 1.024
    );
    Ok(())
}
