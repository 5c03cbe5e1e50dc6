//! Prompt adherence of a model trained on `procedural:shapes`: generates each of the 50 held-out prompts and
//! reads shape, colour and position back with `sd_train::shapes::read` (see `sd_train::demo::evaluate`).
//!
//! `cargo run --release -p sd-train --example shapes_eval -- MODEL_DIR [SIZE] [STEPS] [CFG|auto] [IMAGE_DIR]`
//!
//! CFG defaults to `sd_train::demo::EVAL_CFG`; `auto` first scores each scale of `sd_train::demo::CFG_GRID` on the
//! 50 validation prompts (trained-on captions, other seeds) and takes the best (`sd_train::demo::choose_cfg`).
//!
//! The figure the demo model is held to is "colour, shape and position": all three read back as the prompt names them.

use anyhow::{Context, Result};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().context("usage: shapes_eval MODEL_DIR [SIZE] [STEPS] [CFG|auto] [IMAGE_DIR]")?;
    let size: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    // None: choose on the validation prompts
    let fixed_cfg: Option<f64> = match args.get(3).map(String::as_str) {
        Some("auto") => None,
        Some(s) => Some(s.parse().with_context(|| format!("CFG must be a number or `auto`, not {s:?}"))?),
        None => Some(sd_train::demo::EVAL_CFG),
    };
    let image_dir = args.get(4).map(std::path::PathBuf::from);
    if let Some(d) = &image_dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let sd =
        StableDiffusion::load(model, LoadOptions { load_safety_checker: false, ..LoadOptions::cpu(tch::Kind::Float) })?;
    let cfg_scale = match fixed_cfg {
        Some(cfg) => cfg,
        None => {
            let (best, scores) = sd_train::demo::choose_cfg(&sd, size, steps)?;
            for (cfg, score) in &scores {
                println!("CFG {cfg}: {score}");
            }
            println!("chosen on the validation prompts: CFG {best}");
            best
        }
    };
    // With IMAGE_DIR: every image, and montage.png (10 per row, 3x enlarged, 2 px gaps) for the README.
    let (cell, scale) = (size as u32 + 2, 3);
    let mut montage = image::RgbImage::from_pixel(10 * cell, 5 * cell, image::Rgb([128, 128, 128]));
    let score = sd_train::demo::evaluate(
        &sd,
        sd_train::demo::PromptSet::HeldOut,
        size,
        steps,
        cfg_scale,
        |i, scene, img, reading| {
            if let Some(d) = &image_dir {
                img.save(d.join(format!("{i:02}.png")))?;
                image::imageops::replace(
                    &mut montage,
                    img,
                    ((i as u32 % 10) * cell) as i64,
                    ((i as u32 / 10) * cell) as i64,
                );
                println!("{i:02} {:<52} read {reading:?}", scene.caption());
            }
            Ok(())
        },
    )?;
    if let Some(d) = &image_dir {
        let (w, h) = montage.dimensions();
        image::imageops::resize(&montage, w * scale, h * scale, image::imageops::FilterType::Nearest)
            .save(d.join("montage.png"))?;
    }
    println!("CFG {cfg_scale}: {score}");
    Ok(())
}
