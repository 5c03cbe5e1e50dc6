//! Prompt adherence of a model trained on `procedural:shapes`: generates each of the 50 held-out prompts and
//! reads shape, colour and position back with `sd_train::shapes::read`.
//!
//! `cargo run -p sd-train --example shapes_eval -- MODEL_DIR [SIZE] [STEPS]`

use anyhow::{Context, Result};
use sd_core::image_io::{tensor_to_rgb, Range};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use sd_train::shapes::{held_out_scenes, read};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().context("usage: shapes_eval MODEL_DIR [SIZE] [STEPS]")?;
    let size: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let sd = StableDiffusion::load(model, LoadOptions { load_safety_checker: false, ..LoadOptions::cpu(tch::Kind::Float) })?;
    let scenes = held_out_scenes();
    let (mut shape, mut colour, mut position, mut all) = (0, 0, 0, 0);
    for (i, scene) in scenes.iter().enumerate() {
        let mut req = GenerationRequest::txt2img(&scene.caption(), size, size);
        req.steps = steps;
        req.seed = i as u64;
        req.cfg_scale = 3.0;
        let out = sd.generate(&req, &mut |_| {})?;
        let img = tensor_to_rgb(&out.images[0], Range::Unit)?;
        let r = read(&img);
        let (s, c, p) = r.map_or((false, false, false), |r| (r.shape == scene.shape, r.colour == scene.colour, r.position == scene.position));
        shape += s as usize;
        colour += c as usize;
        position += p as usize;
        all += (s && c && p) as usize;
    }
    let pct = |k: usize| 100.0 * k as f64 / scenes.len() as f64;
    println!(
        "{} held-out prompts: shape {:.0}%  colour {:.0}%  position {:.0}%  all three {:.0}%  (chance: 33% / 17% / 20% / 1%)",
        scenes.len(),
        pct(shape),
        pct(colour),
        pct(position),
        pct(all)
    );
    Ok(())
}
