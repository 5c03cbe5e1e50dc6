//! Train the `sd-tiny-shapes` demo model from nothing: scaffold (real CLIP tokenizer, random text encoder), VAE on
//! `procedural:shapes`, then the text encoder and a UNet from its config together; writes a diffusers folder.
//!
//! `cargo run --release -p sd-train --example train_demo -- WORK_DIR FINAL_DIR [VAE_STEPS] [UNET_STEPS]`

use anyhow::{Context, Result};
use sd_models::clip::ClipTokenizer;
use sd_train::lr::LrSchedule;
use sd_train::{demo, run, shapes, TrainConfig, Trainer};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: train_demo WORK_DIR FINAL_DIR [VAE_STEPS] [UNET_STEPS]";
    let work = PathBuf::from(args.first().context(usage)?);
    let final_dir = PathBuf::from(args.get(1).context(usage)?);
    let vae_steps: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1500);
    let unet_steps: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let seed = 0;
    let start = Instant::now();
    let base = work.join("base");
    let bpe = ClipTokenizer::default_bpe_path();
    // Training is deterministic, so a VAE this work folder already trained with the same steps and seed is the one
    // this run would train: keep it (the UNet recipe can be changed without re-training the VAE).
    let vae_dir = base.join("vae");
    let marker = serde_json::json!({"vae_steps": vae_steps, "seed": seed, "examples": demo::EXAMPLES});
    let kept = std::fs::read_to_string(vae_dir.join("trained.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| *v == marker)
        .and_then(|_| {
            let config = std::fs::read(vae_dir.join("config.json")).ok()?;
            let weights = std::fs::read(vae_dir.join("diffusion_pytorch_model.safetensors")).ok()?;
            Some((config, weights))
        });
    demo::scaffold(&base, &bpe, seed)?;
    let data = shapes::dataset(&format!("procedural:shapes:{}", demo::EXAMPLES), demo::SIZE, seed)?;
    if let Some((config, weights)) = kept {
        std::fs::write(vae_dir.join("config.json"), config)?;
        std::fs::write(vae_dir.join("diffusion_pytorch_model.safetensors"), weights)?;
        eprintln!("keeping the VAE already trained in {} ({vae_steps} steps, seed {seed})", vae_dir.display());
    } else {
        eprintln!(
            "scaffold written to {} ({:.0} s); training the VAE for {vae_steps} steps",
            base.display(),
            start.elapsed().as_secs_f64()
        );
        let losses = demo::train_vae(&base, &data, vae_steps, 16, 1e-3, seed, |s, l| {
            if s % 250 == 0 {
                eprintln!("vae step {s}: loss {l:.5} ({:.0} s)", start.elapsed().as_secs_f64());
            }
        })?;
        let (first, last) = (losses.first().copied().unwrap_or(0.0), losses.last().copied().unwrap_or(0.0));
        eprintln!("VAE loss {first:.5} -> {last:.5} ({:.0} s)", start.elapsed().as_secs_f64());
        std::fs::write(vae_dir.join("trained.json"), marker.to_string())?;
    }

    let mut cfg = TrainConfig::new(base.clone(), work.join("run"));
    cfg.unet_config = Some(base.join("unet/config.json"));
    cfg.batch_size = 32;
    cfg.lr = 1e-3;
    cfg.lr_schedule = LrSchedule::Cosine;
    cfg.warmup_steps = 100;
    cfg.max_steps = unet_steps;
    // Min-SNR-γ 5 in the form that keeps high-noise steps at full weight: the paper's form would scale step t's
    // v-loss by SNR/(SNR + 1), 0 at the zero-SNR last step, exactly where the layout the prompt names is learnt.
    cfg.snr_gamma = Some(5.0);
    cfg.snr_keep_high_noise = true;
    cfg.caption_dropout = 0.1;
    cfg.train_text_encoder = true;
    cfg.checkpoint_every = Some(1000);
    cfg.seed = seed;
    let mut trainer = Trainer::new(cfg, data)?;
    run::run(&mut trainer, &mut |ev| {
        if let run::Event::Step(r) = ev {
            if r.step % 250 == 0 {
                eprintln!(
                    "unet step {}: loss {:.5} lr {:.2e} ({:.0} s)",
                    r.step,
                    r.loss,
                    r.lr,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    })?;
    run::save_model(&trainer, &final_dir, false, false)?;
    let captions = shapes::training_captions().join("\n") + "\n";
    sd_core::atomic::write_atomic(
        &final_dir.join("training_captions.txt"),
        sd_core::atomic::Overwrite::Allow,
        captions.as_bytes(),
    )?;
    eprintln!("model written to {} in {:.0} s", final_dir.display(), start.elapsed().as_secs_f64());
    Ok(())
}
