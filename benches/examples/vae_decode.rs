//! One VAE decode of `[1, 4, size/8, size/8]` latents, median of N: measures the decoder in NCHW vs channels-last.
//!
//! usage: cargo run --release -p sd-benches --example vae_decode -- --model DIR [--size 512] [--dtype f32|bf16]
//!        [--repeats 3] [--channels-last] [--threads N]
//!
//! Prints one `VAE_DECODE {json}` line on stdout.

use anyhow::{bail, Context, Result};
use sd_models::vae::AutoencoderKL;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    sd_core::alloc::reuse_freed_memory();
    let (mut model, mut size, mut dtype, mut repeats, mut nhwc) =
        (PathBuf::new(), 512i64, "bf16".to_string(), 3usize, false);
    let mut threads = sd_core::device::physical_cores() as i32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--size" => size = value()?.parse().context("--size")?,
            "--dtype" => dtype = value()?,
            "--repeats" => repeats = value()?.parse().context("--repeats")?,
            "--channels-last" => nhwc = true,
            "--threads" => threads = value()?.parse().context("--threads")?,
            other => bail!("unknown argument {other}"),
        }
    }
    let kind = match dtype.as_str() {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => bail!("--dtype {other}: expected f32 or bf16"),
    };
    if !(1..=1024).contains(&threads) {
        bail!("--threads {threads}: expected 1..=1024");
    }
    tch::set_num_threads(threads);
    let dir = if model.join("vae").is_dir() { model.join("vae") } else { model.clone() };
    let vae = AutoencoderKL::load_with(&dir, kind, Device::Cpu, nhwc)?;
    tch::manual_seed(0);
    let z =
        Tensor::randn([1, vae.config().latent_channels, size / 8, size / 8], (Kind::Float, Device::Cpu)).to_kind(kind);
    let mut times = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for i in 0..=repeats {
            let start = Instant::now();
            let _ = vae.decode(&z)?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    println!("VAE_DECODE {{\"size\": {size}, \"dtype\": \"{dtype}\", \"channels_last\": {nhwc}, \"median_s\": {median:.4}, \"times\": {times:?}, \"threads\": {threads}}}");
    Ok(())
}
