//! Step caching on the demo model: for each of the 50 held-out prompts (prompt `i`, seed `i`, the model's DDIM,
//! 20 steps, CFG 3, 32 px: the settings the README's table was measured with), the uncached image and the image with each `--cache` mode,
//! run one after the other in the same process. Reports per mode: prompt adherence (named colour, shape and position read back
//! by `sd_train::shapes::read`), PSNR and SSIM against the uncached image, and the denoising time as a ratio to the
//! uncached runs (sums over the alternated runs, so a loaded machine slows both sides alike).
//!
//! `cargo run --release -p sd-train --example step_cache_eval -- MODEL_DIR [PROMPTS] [MODE ...]`
//! (`PROMPTS`: how many of the 50 held-out prompts, from the first; default all)
//! (modes as `sd generate --cache` takes them; default: deepcache at intervals 2, 3, 5 branch 0 and interval 3
//! branch 1).

use anyhow::{Context, Result};
use sd_core::image_io::{tensor_to_rgb, Range};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, StepCache};
use tch::{Kind, Tensor};

/// The guidance scale of the README's step-caching table (`shapes_eval` used 3 then; it now uses
/// `sd_train::demo::EVAL_CFG`, chosen on the validation prompts).
const CFG: f64 = 3.0;

/// PSNR in dB of two `[3, H, W]` images in [0, 1].
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).square().mean(Kind::Double).double_value(&[]);
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// SSIM (Wang et al. 2004: 11×11 Gaussian window, σ 1.5, K1 0.01, K2 0.03, data range 1) averaged over the
/// channels and the valid window positions of two `[3, H, W]` images in [0, 1].
fn ssim(a: &Tensor, b: &Tensor) -> f64 {
    let (k, sigma) = (11i64, 1.5f64);
    let g: Vec<f64> = (0..k).map(|i| (-((i - k / 2) as f64).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = g.iter().sum();
    let g = Tensor::from_slice(&g.iter().map(|v| v / s).collect::<Vec<_>>());
    let w = g.outer(&g).reshape([1, 1, k, k]).repeat([3, 1, 1, 1]);
    let blur = |x: &Tensor| x.to_kind(Kind::Double).unsqueeze(0).conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let (ma, mb) = (blur(a), blur(b));
    let (saa, sbb, sab) = (blur(&(a * a)) - &ma * &ma, blur(&(b * b)) - &mb * &mb, blur(&(a * b)) - &ma * &mb);
    let num = (&ma * &mb * 2.0 + c1) * (sab * 2.0 + c2);
    let den = (&ma * &ma + &mb * &mb + c1) * (saa + sbb + c2);
    (num / den).mean(Kind::Double).double_value(&[])
}

#[derive(Default)]
struct Row {
    adherence: sd_train::demo::Adherence,
    psnr: Vec<f64>,
    ssim: Vec<f64>,
    denoise_s: f64,
    shallow: usize,
    calls: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().context("usage: step_cache_eval MODEL_DIR [PROMPTS] [MODE ...]")?;
    let prompts: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let skip = if args.get(1).is_some_and(|a| a.parse::<usize>().is_ok()) { 2 } else { 1 };
    let mut modes: Vec<StepCache> = args[skip..].iter().map(|m| m.parse()).collect::<Result<_>>()?;
    if modes.is_empty() {
        modes =
            ["deepcache:interval=2", "deepcache:interval=3", "deepcache:interval=5", "deepcache:interval=3,branch=1"]
                .iter()
                .map(|m| m.parse())
                .collect::<Result<_>>()?;
    }
    modes.insert(0, StepCache::Off);
    let sd =
        StableDiffusion::load(model, LoadOptions { load_safety_checker: false, ..LoadOptions::cpu(tch::Kind::Float) })?;
    let mut scenes = sd_train::shapes::held_out_scenes();
    scenes.truncate(prompts);
    let mut rows: Vec<Row> = modes.iter().map(|_| Row::default()).collect();
    for (i, scene) in scenes.iter().enumerate() {
        let mut reference: Option<Tensor> = None;
        for (m, mode) in modes.iter().enumerate() {
            let mut req = GenerationRequest::txt2img(&scene.caption(), 32, 32);
            req.steps = 20;
            req.seed = i as u64;
            req.cfg_scale = CFG;
            req.cache = *mode;
            let out = sd.generate(&req, &mut sd_pipeline::generate::quiet())?;
            let image = out.images[0].shallow_clone();
            let rgb = tensor_to_rgb(&image, Range::Unit)?;
            let r = sd_train::shapes::read(&rgb);
            let row = &mut rows[m];
            row.adherence.count(scene, r);
            row.denoise_s += out.timings.denoise_s;
            row.shallow += out.shallow_calls;
            row.calls += out.unet_calls;
            match &reference {
                None => reference = Some(image),
                Some(base) => {
                    row.psnr.push(psnr(&image, base));
                    row.ssim.push(ssim(&image, base));
                }
            }
        }
        eprintln!("prompt {i} done");
    }
    let n = scenes.len() as f64;
    let base_s = rows[0].denoise_s;
    println!("| --cache | colour, shape and position | colour and shape | shape | colour | PSNR vs uncached (mean / min) | SSIM (mean / min) | shallow UNet calls | denoise time vs uncached |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (mode, row) in modes.iter().zip(&rows) {
        let pct = |k: usize| 100.0 * k as f64 / n;
        let stats = |v: &[f64], unit: &str, digits: usize| {
            if v.is_empty() {
                "—".to_string()
            } else {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
                format!("{mean:.digits$}{unit} / {min:.digits$}{unit}")
            }
        };
        println!(
            "| `{mode}` | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {} | {} | {} of {} | {:.2}× |",
            pct(row.adherence.all_three),
            pct(row.adherence.colour_and_shape),
            pct(row.adherence.shape),
            pct(row.adherence.colour),
            stats(&row.psnr, " dB", 1),
            stats(&row.ssim, "", 3),
            row.shallow,
            row.calls,
            row.denoise_s / base_s
        );
    }
    Ok(())
}
