//! Milliseconds per bf16 3×3 convolution (stride 1, padding 1) for a list of layer shapes, oneDNN's direct kernel
//! with a packed weight against Winograd F(2×2, 3×3) (`sd_core::winograd`), measured alternately (A, B, A, B, …) so
//! a background load hits both equally; prints the median and minimum of each and their ratio. The table behind
//! `winograd::worth_it`.
//!
//! usage: cargo run --release -p sd-benches --example conv_call -- [--shapes N,CIN,COUT,SIZE;…] [--repeats 5]
//!
//! Default: the UNet's (batch 2) and the VAE decoder's (batch 1) layer shapes at 512 px.

use anyhow::{bail, Context, Result};
use sd_core::{layout::to_channels_last, onednn, winograd};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const DEFAULT: &str = "2,320,320,64;2,640,640,32;2,1280,1280,16;2,1280,1280,8;2,960,320,64;2,1920,640,32;\
                       1,512,512,64;1,512,512,128;1,512,512,256;1,512,256,256;1,256,256,256;1,128,128,512";

fn main() -> Result<()> {
    let (mut shapes, mut repeats) = (DEFAULT.to_string(), 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--shapes" => shapes = value,
            "--repeats" => repeats = value.parse().context("--repeats")?,
            other => bail!("unknown argument {other}"),
        }
    }
    if !winograd::available() || !onednn::supported() {
        bail!("this CPU runs neither Winograd nor the packed kernels in bf16 (needs AVX-512 BF16 without AMX)");
    }
    let _no_grad = tch::no_grad_guard();
    println!("shape (N, in → out, size)  direct ms (median / min)  Winograd ms (median / min)  ratio  worth_it");
    for shape in shapes.split(';').filter(|s| !s.trim().is_empty()) {
        let v: Vec<i64> = shape.trim().split(',').map(|s| s.parse()).collect::<Result<_, _>>().context("--shapes")?;
        let [n, ci, co, s] = v[..] else { bail!("a shape is N,CIN,COUT,SIZE, got {shape}") };
        tch::manual_seed(0);
        let x = to_channels_last(&Tensor::randn([n, ci, s, s], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16));
        let w = Tensor::randn([co, ci, 3, 3], (Kind::Float, Device::Cpu)) / ((ci * 9) as f64).sqrt();
        let b = Tensor::randn([co], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let packed =
            onednn::pack_conv_weight(&to_channels_last(&w.to_kind(Kind::BFloat16)), 1, 1, Some([2, ci, 64, 64]))?;
        let u = winograd::Weight::new(&w)?;
        let run = |which: usize| -> Result<f64> {
            let t = Instant::now();
            let y = if which == 0 {
                onednn::conv(&x, &packed, Some(&b), 1, 1, onednn::Unary::None)?
            } else {
                winograd::conv(&x, &u, Some(&b))?
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(y);
            Ok(ms)
        };
        run(0)?;
        run(1)?;
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (which, ts) in times.iter_mut().enumerate() {
                ts.push(run(which)?);
            }
        }
        let stat = |ts: &mut Vec<f64>| {
            ts.sort_by(f64::total_cmp);
            (ts[ts.len() / 2], ts[0])
        };
        let ((dm, dmin), (wm, wmin)) = (stat(&mut times[0].clone()), stat(&mut times[1].clone()));
        println!(
            "{n}, {ci} → {co}, {s}²  {dm:8.1} / {dmin:8.1}  {wm:8.1} / {wmin:8.1}  {:.2}  {}",
            wm / dm,
            winograd::worth_it(ci, co)
        );
    }
    Ok(())
}
