//! Milliseconds per `attention` call for one shape, two modes measured alternately (A, B, A, B, …) so that a
//! background load hits both equally; prints the median and minimum of each.
//!
//! usage: cargo run --release -p sd-benches --example attention_call -- [--shape B,H,LQ,LK,D] [--repeats 7]
//!        [--modes sdpa,fused] [--dtype bf16|f32]
//!
//! Default: SD1.5's 512-px self-attention at the top level, [2, 8, 4096, 40] against 4096 keys, in bf16.

use anyhow::{bail, Context, Result};
use sd_models::attention::{attention, AttentionMode};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let (mut shape, mut repeats, mut modes, mut kind) =
        (vec![2i64, 8, 4096, 4096, 40], 7usize, "sdpa,fused".to_string(), Kind::BFloat16);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--shape" => {
                shape = value.split(',').map(|s| s.parse::<i64>()).collect::<Result<_, _>>().context("--shape")?
            }
            "--repeats" => repeats = value.parse().context("--repeats")?,
            "--modes" => modes = value,
            "--dtype" => {
                kind = match value.as_str() {
                    "bf16" => Kind::BFloat16,
                    "f32" => Kind::Float,
                    other => bail!("--dtype {other}: expected bf16 or f32"),
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let [b, h, lq, lk, d] = shape[..] else { bail!("--shape needs B,H,LQ,LK,D") };
    let modes: Vec<(String, AttentionMode)> =
        modes.split(',').map(|m| Ok((m.to_string(), m.parse::<AttentionMode>()?))).collect::<Result<_>>()?;
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    // q arrives transposed from [B, L, H, D], as in `Attention::forward`.
    let q = Tensor::randn([b, lq, h, d], opts).to_kind(kind).transpose(1, 2);
    let k = Tensor::randn([b, lk, h, d], opts).to_kind(kind).transpose(1, 2);
    let v = Tensor::randn([b, lk, h, d], opts).to_kind(kind).transpose(1, 2);
    let _no_grad = tch::no_grad_guard();
    for (_, mode) in &modes {
        let _warm = attention(&q, &k, &v, None, false, *mode)?;
    }
    let mut times = vec![Vec::with_capacity(repeats); modes.len()];
    for _ in 0..repeats {
        for (i, (_, mode)) in modes.iter().enumerate() {
            let t = Instant::now();
            let out = attention(&q, &k, &v, None, false, *mode)?;
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            drop(out);
        }
    }
    let flop = 4.0 * (b * h * lq * lk * d) as f64;
    for ((name, _), mut ts) in modes.iter().zip(times) {
        ts.sort_by(f64::total_cmp);
        let med = ts[ts.len() / 2];
        println!(
            "ATTN_CALL {{\"mode\": \"{name}\", \"shape\": {shape:?}, \"median_ms\": {med:.1}, \"min_ms\": {:.1}, \"gflops\": {:.0}, \"times_ms\": {:?}}}",
            ts[0],
            flop / med / 1e6,
            ts.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}
