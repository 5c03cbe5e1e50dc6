//! The seed's GAN, runnable: trains the DCGAN of `model.rs` on the procedural shapes at 32 px and writes a montage
//! of 64 samples, with what the shapes checker reads in them (how many show a readable shape, and how many
//! different shape/colour pairs appear: a collapsed generator draws few). A GAN has no text input, so unlike the
//! diffusion demo model it cannot be asked for "a red circle".
//!
//!     cargo run --release -p sd-train --example dcgan -- [STEPS=2000] [OUT=dcgan.png] [SEED=0]

mod model;

use anyhow::{Context, Result};
use sd_core::image_io::{self, Range};
use sd_core::TorchGenerator;
use sd_train::optim::AdamW;
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor};

const BATCH: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: u64 = args.first().map(|s| s.parse()).transpose().context("STEPS must be a number")?.unwrap_or(2000);
    let out = args.get(1).cloned().unwrap_or_else(|| "dcgan.png".into());
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose().context("SEED must be a number")?.unwrap_or(0);
    let device = Device::Cpu;
    let data = sd_train::shapes::dataset("procedural:shapes", 32, seed)?;
    let mut gen = TorchGenerator::new(seed);
    let (mut g, mut d) = (model::generator(device), model::discriminator(device));
    g.init(&mut gen)?;
    d.init(&mut gen)?;
    let mut opt_g = AdamW::new(g.parameters("G"), model::adam())?;
    let mut opt_d = AdamW::new(d.parameters("D"), model::adam())?;
    let start = std::time::Instant::now();
    for step in 1..=steps {
        let idx: Vec<usize> = (0..BATCH).map(|_| gen.next_u32() as usize % data.len()).collect();
        let real =
            Tensor::f_stack(&idx.iter().map(|&i| data.pixels(i, &mut gen, device)).collect::<Result<Vec<_>>>()?, 0)?;
        let z = gen.try_randn(&[BATCH as i64, model::NZ, 1, 1], Kind::Float, device)?;
        let s = model::train_step(&g, &d, &mut opt_g, &mut opt_d, &real, &z)?;
        if step % 100 == 0 || step == steps {
            eprintln!(
                "step {step}: loss D {:.3} G {:.3}  D(real) {:.2} D(fake) {:.2} → {:.2} after D's step  ({:.0} s)",
                s.err_d_real + s.err_d_fake,
                s.err_g,
                s.d_real_mean,
                s.d_fake_mean,
                s.d_fake_after_mean,
                start.elapsed().as_secs_f64()
            );
        }
    }
    // 64 samples in an 8×8 montage, each enlarged 3× with a 2 px gap
    let z = gen.try_randn(&[64, model::NZ, 1, 1], Kind::Float, device)?;
    let samples = tch::no_grad(|| g.forward(&z, false)).f_add_scalar(1.0)?.f_div_scalar(2.0)?.f_clamp(0.0, 1.0)?;
    let (cell, scale) = (32 * 3 + 2, 3);
    let mut montage = image::RgbImage::from_pixel(8 * cell, 8 * cell, image::Rgb([128, 128, 128]));
    let (mut readable, mut kinds) = (0, BTreeSet::new());
    for i in 0..64i64 {
        let img = image_io::tensor_to_rgb(&samples.f_narrow(0, i, 1)?, Range::Unit)?;
        if let Some(r) = sd_train::shapes::read(&img) {
            readable += 1;
            kinds.insert((r.shape, r.colour));
        }
        let big = image::imageops::resize(&img, 32 * scale, 32 * scale, image::imageops::FilterType::Nearest);
        let (x, y) = ((i % 8) as u32 * cell, (i / 8) as u32 * cell);
        image::imageops::replace(&mut montage, &big, x as i64, y as i64);
    }
    montage.save(&out).with_context(|| format!("cannot write {out}"))?;
    println!(
        "{steps} steps in {:.0} s; {out}: {readable}/64 samples show a readable shape, {} distinct shape/colour pairs \
         (the data has 18)",
        start.elapsed().as_secs_f64(),
        kinds.len()
    );
    Ok(())
}
