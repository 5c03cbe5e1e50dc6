//! Step caching on a full-size UNet: one classifier-free-guidance evaluation (batch 2) of an SD1.5-sized UNet
//! (`configs/sd15_unet.json`, random weights: speed does not depend on the values), whole vs the shallow pass
//! DeepCache runs between full steps (`sd_models::unet::split`), alternated round by round in one process so a
//! loaded machine slows both alike. Prints the medians, their ratio and what that makes a whole denoising loop
//! at each interval (one full evaluation, then interval − 1 shallow ones).
//!
//! usage: cargo run --release -p sd-benches --example step_cache -- [--size 512] [--dtype bf16|f32]
//!        [--branch 0] [--rounds 5] [--threads N] [--model DIR]

use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use sd_models::unet::{UNet2DConditionModel, UNetConfig, UNetInputs};
use sd_pipeline::step_cache::StepCache;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    sd_core::alloc::reuse_freed_memory();
    let (mut size, mut dtype, mut branch, mut rounds, mut threads, mut model) =
        (512i64, "bf16".to_string(), 0usize, 5usize, None::<i32>, None::<PathBuf>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => size = value()?.parse()?,
            "--dtype" => dtype = value()?,
            "--branch" => branch = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--threads" => threads = Some(value()?.parse()?),
            "--model" => model = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    tch::set_num_threads(threads.unwrap_or(sd_core::device::physical_cores() as i32));
    let kind = match dtype.as_str() {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => bail!("--dtype {other}: expected f32 or bf16"),
    };
    let nhwc = sd_models::nn::channels_last_by_default(Device::Cpu, kind);
    let unet = match &model {
        Some(dir) => {
            let dir = if dir.join("unet").is_dir() { dir.join("unet") } else { dir.clone() };
            UNet2DConditionModel::load_with(&dir, kind, Device::Cpu, nhwc)?
        }
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let cfg = UNetConfig::from_file(&root.join("configs/sd15_unet.json"))?;
            tch::manual_seed(0);
            let vb = VarBuilder::from_init(kind, Device::Cpu).with_channels_last(nhwc)?;
            UNet2DConditionModel::from_varbuilder(&vb, &cfg)?
        }
    };
    let at = StepCache::split_point(branch, &unet)?;
    let cfg = unet.config().clone();
    tch::manual_seed(0);
    let lat = size / 8;
    let x = Tensor::randn([2, cfg.in_channels, lat, lat], (Kind::Float, Device::Cpu)).to_kind(kind);
    let ctx_dim = cfg.cross_attention_dim.expand(1, "cross_attention_dim").map(|v| v[0]).unwrap_or(768);
    let ctx = Tensor::randn([2, 77, ctx_dim], (Kind::Float, Device::Cpu)).to_kind(kind);
    let t = Tensor::from(500.0f32);
    let inputs = UNetInputs::default();
    let (mut full, mut shallow) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        let (_, deep) = unet.forward_capture(&x, &t, &ctx, &inputs, at)?; // warm-up, and the state to reuse
        let _ = unet.forward_shallow(&x, &t, &ctx, &inputs, at, &deep)?;
        for _ in 0..rounds {
            let start = Instant::now();
            let _ = unet.forward_capture(&x, &t, &ctx, &inputs, at)?;
            full.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let _ = unet.forward_shallow(&x, &t, &ctx, &inputs, at, &deep)?;
            shallow.push(start.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    let (f, s) = (median(&mut full), median(&mut shallow));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "SD1.5-sized UNet, {size} px, {dtype}, batch 2, {} threads, branch {branch} (split {at:?}), {rounds} alternated rounds, load average {}",
        tch::get_num_threads(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("full evaluation {f:.3} s, shallow {s:.4} s (median); shallow / full = {:.4}", s / f);
    for n in [2usize, 3, 5] {
        println!(
            "interval {n}: UNet time per step {:.3}× uncached, speed-up {:.2}×",
            (f + (n - 1) as f64 * s) / (n as f64 * f),
            n as f64 * f / (f + (n - 1) as f64 * s)
        );
    }
    Ok(())
}
