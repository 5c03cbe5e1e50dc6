//! The training loop around [`Trainer::train_step`]: the JSONL loss log, `checkpoint-N/` folders, preview images,
//! and the final diffusers folder in the output directory; each model folder gets the training-data record
//! (`dataset_manifest.jsonl`, `README.md`).

use crate::checkpoint::{self, TrainedComponent, TrainingState};
use crate::trainer::{StepReport, Trainer};
use anyhow::{Context, Result};
use sd_core::atomic::{write_atomic, Overwrite};
use sd_core::image_io::{self, Range};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use sd_provenance::metadata::{encode_png, TextChunk};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the loop tells its caller (the CLI draws a progress bar from these).
pub enum Event<'a> {
    Step(&'a StepReport),
    Checkpoint(&'a Path),
    Samples(&'a [PathBuf]),
}

/// Write the model as a diffusers folder at `dir`; with `state`, also what `--resume` needs.
pub fn save_model(trainer: &Trainer, dir: &Path, use_ema: bool, state: bool) -> Result<()> {
    let mut trained = vec![TrainedComponent {
        name: "unet",
        config: &trainer.unet_config_json,
        weights_file: "diffusion_pytorch_model.safetensors",
        tensors: trainer.unet_weights(use_ema),
    }];
    if let Some(te) = trainer.text_encoder_weights() {
        trained.push(TrainedComponent {
            name: "text_encoder",
            config: &trainer.text.config_json,
            weights_file: "model.safetensors",
            tensors: te,
        });
    }
    checkpoint::write_pipeline(&trainer.base.root, dir, trained)?;
    let card = crate::record::CardRun {
        cfg: &trainer.cfg,
        steps_done: trainer.step,
        width: trainer.dataset.width,
        height: trainer.dataset.height,
    };
    crate::record::write(dir, &trainer.dataset.record, &card)?;
    if state {
        let cfg = &trainer.cfg;
        let st = TrainingState {
            step: trainer.step,
            seed: cfg.seed,
            batch_size: cfg.batch_size,
            grad_accum: cfg.grad_accum,
            max_steps: cfg.max_steps,
            ema: trainer.ema.is_some(),
            train_text_encoder: cfg.train_text_encoder,
        };
        let mut tensors = trainer.optim.state_tensors();
        if let Some(ema) = &trainer.ema {
            tensors.extend(ema.weights().iter().map(|(n, t)| (format!("ema.{n}"), t.shallow_clone())));
        }
        checkpoint::write_state(dir, &st, &tensors)?;
    }
    Ok(())
}

/// Save the current weights to `<output>/.preview`, load them as a pipeline and render every sample prompt.
pub fn write_samples(trainer: &Trainer) -> Result<Vec<PathBuf>> {
    let cfg = &trainer.cfg;
    let preview = cfg.output.join(".preview");
    save_model(trainer, &preview, true, false)?;
    let mut opts = LoadOptions::cpu(tch::Kind::Float);
    opts.device = cfg.device;
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(&preview.to_string_lossy(), opts).context("loading the preview pipeline")?;
    let mut written = Vec::new();
    for (i, prompt) in cfg.sample_prompts.iter().enumerate() {
        let mut req = GenerationRequest::txt2img(prompt, trainer.dataset.width as i64, trainer.dataset.height as i64);
        req.steps = cfg.sample_steps;
        req.seed = cfg.seed;
        let out = sd.generate(&req, &mut sd_pipeline::generate::quiet())?;
        for (j, img) in out.images.iter().enumerate() {
            let rgb = image_io::tensor_to_rgb(img, Range::Unit)?;
            let path = cfg.output.join("samples").join(format!("step-{:06}-{i}-{j}.png", trainer.step));
            let chunk = TextChunk::new(
                "parameters",
                &format!("{prompt}\nSteps: {}, Seed: {}, Training step: {}", req.steps, req.seed, trainer.step),
            );
            write_atomic(&path, Overwrite::Allow, &encode_png(&rgb, &[chunk])?)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Train up to `max_steps`, then write the final model (EMA weights when EMA is on) into the output folder.
pub fn run(trainer: &mut Trainer, on_event: &mut dyn FnMut(Event)) -> Result<()> {
    let cfg = trainer.cfg.clone();
    std::fs::create_dir_all(&cfg.output).with_context(|| format!("cannot create {}", cfg.output.display()))?;
    let log_path = cfg.output.join("loss.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let start = std::time::Instant::now();
    while trainer.step < cfg.max_steps {
        let report = trainer.train_step()?;
        let line = serde_json::json!({
            "step": report.step, "loss": report.loss, "lr": report.lr, "grad_norm": report.grad_norm,
            "elapsed_s": start.elapsed().as_secs_f64(),
        });
        writeln!(log, "{line}").with_context(|| format!("cannot write {}", log_path.display()))?;
        on_event(Event::Step(&report));
        let s = trainer.step;
        if cfg.checkpoint_every.is_some_and(|n| s.is_multiple_of(n)) && s < cfg.max_steps {
            let dir = checkpoint::checkpoint_dir(&cfg.output, s);
            save_model(trainer, &dir, false, true)?;
            on_event(Event::Checkpoint(&dir));
        }
        if cfg.sample_every.is_some_and(|n| s.is_multiple_of(n)) {
            let files = write_samples(trainer)?;
            on_event(Event::Samples(&files));
        }
    }
    let last = checkpoint::checkpoint_dir(&cfg.output, trainer.step);
    save_model(trainer, &last, false, true)?;
    on_event(Event::Checkpoint(&last));
    save_model(trainer, &cfg.output, true, false)?;
    Ok(())
}
