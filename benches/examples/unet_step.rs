//! One classifier-free-guidance UNet step (batch 2) of sd-rs, median of N: our side of the per-step comparison in
//! `cargo xtask compare` (the reference side is `scripts/bench/unet_step.py`, same inputs and output format).
//!
//! usage: cargo run --release -p sd-benches --example unet_step -- --model DIR [--size 512] [--dtype f32|bf16]
//!        [--repeats 5] [--warmup 1] [--attention auto|sdpa|fused|matmul|sliced] [--threads N]
//!
//! Prints one `UNET_STEP {json}` line on stdout.

use anyhow::{bail, Context, Result};
use sd_models::attention::AttentionMode;
use sd_models::unet::{AddedCond, UNet2DConditionModel};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

struct Args {
    model: PathBuf,
    size: i64,
    dtype: String,
    repeats: usize,
    warmup: usize,
    attention: String,
    threads: Option<i32>,
    /// `None`: what `sd generate` does (channels-last for bf16 on the CPU).
    channels_last: Option<bool>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: PathBuf::new(),
        size: 512,
        dtype: "bf16".into(),
        repeats: 5,
        warmup: 1,
        attention: "auto".into(),
        threads: None,
        channels_last: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--size" => a.size = value()?.parse().context("--size")?,
            "--dtype" => a.dtype = value()?,
            "--repeats" => a.repeats = value()?.parse().context("--repeats")?,
            "--warmup" => a.warmup = value()?.parse().context("--warmup")?,
            "--attention" => a.attention = value()?,
            "--threads" => a.threads = Some(value()?.parse().context("--threads")?),
            "--channels-last" => a.channels_last = Some(true),
            "--nchw" => a.channels_last = Some(false),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.model.as_os_str().is_empty() {
        bail!("--model DIR is required (a diffusers pipeline folder or its unet/ folder)");
    }
    Ok(a)
}

fn main() -> Result<()> {
    sd_core::alloc::reuse_freed_memory();
    let a = parse()?;
    tch::set_num_threads(a.threads.unwrap_or(sd_core::device::physical_cores() as i32));
    let kind = match a.dtype.as_str() {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => bail!("--dtype {other}: expected f32 or bf16"),
    };
    let dir = if a.model.join("unet").is_dir() { a.model.join("unet") } else { a.model.clone() };
    let nhwc = a.channels_last.unwrap_or(sd_models::nn::channels_last_by_default(Device::Cpu, kind));
    let t_load = Instant::now();
    let mut unet = UNet2DConditionModel::load_with(&dir, kind, Device::Cpu, nhwc)?;
    eprintln!("UNet loaded in {:.3} s", t_load.elapsed().as_secs_f64());
    unet.set_attention_mode(a.attention.parse::<AttentionMode>()?);
    let cfg = unet.config().clone();
    tch::manual_seed(0);
    let lat = a.size / 8;
    let x = Tensor::randn([2, cfg.in_channels, lat, lat], (Kind::Float, Device::Cpu)).to_kind(kind);
    let ctx_dim = cfg.cross_attention_dim.expand(1, "cross_attention_dim").map(|v| v[0]).unwrap_or(768);
    let ctx = Tensor::randn([2, 77, ctx_dim], (Kind::Float, Device::Cpu)).to_kind(kind);
    // SDXL-style UNets also take the pooled text embedding and the six size ids (original, crop, target).
    let added = match cfg.addition_embed_type.as_deref() {
        Some("text_time") => {
            let time_dim = cfg.addition_time_embed_dim.unwrap_or(256);
            let pooled = cfg.projection_class_embeddings_input_dim.unwrap_or(2816) - 6 * time_dim;
            let s = a.size as f32;
            Some(AddedCond {
                text_embeds: Tensor::randn([2, pooled], (Kind::Float, Device::Cpu)).to_kind(kind),
                time_ids: Tensor::from_slice(&[s, s, 0.0, 0.0, s, s]).unsqueeze(0).repeat([2, 1]).to_kind(kind),
            })
        }
        _ => None,
    };
    let t = Tensor::from(500.0f32);
    let mut times = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for i in 0..a.warmup + a.repeats {
            let start = Instant::now();
            let _ = unet.forward(&x, &t, &ctx, added.as_ref(), None)?;
            if i >= a.warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let min = sorted.first().copied().unwrap_or(f64::NAN);
    let r4 = |v: f64| (v * 1e4).round() / 1e4;
    println!(
        "UNET_STEP {{\"impl\": \"sd-rs\", \"size\": {}, \"dtype\": \"{}\", \"attention\": \"{}\", \"channels_last\": {}, \"median_s\": {}, \"min_s\": {}, \"times\": {:?}, \"threads\": {}}}",
        a.size,
        a.dtype,
        a.attention,
        nhwc,
        r4(median),
        r4(min),
        times.iter().map(|&v| r4(v)).collect::<Vec<_>>(),
        tch::get_num_threads()
    );
    Ok(())
}
