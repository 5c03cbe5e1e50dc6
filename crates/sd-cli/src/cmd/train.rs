//! `sd train`: fine-tune a model's UNet (or train one from a config) on a folder of captioned images.

use super::usage;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sd_core::device::{ComputeDevice, CpuFeatures};
use sd_train::dataset::{Crop, Dataset};
use sd_train::lr::LrSchedule;
use sd_train::optout::{DenyList, OptOutPolicy};
use sd_train::run::Event;
use sd_train::{TrainConfig, Trainer};
use std::path::PathBuf;
use tch::{Device, Kind};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sd train --model ./sd15 --dataset ./my-photos --output ./sd15-tuned --steps 2000 --resolution 512 --lr 1e-5
  sd train --model ./sd15 --dataset ./pairs --output ./out --steps 500 --snr-gamma 5 --ema --checkpoint-every 100
  sd train --model ./sd15 --dataset ./pairs --output ./out --steps 1000 --resume ./out/checkpoint-500
  sd train --model ./tiny --unet-config ./unet.json --dataset ./shapes --output ./scratch --steps 3000 --lr 1e-3

The dataset folder holds image files (png, jpg, webp) each with a .txt caption of the same name, or a
metadata.jsonl (one {\"file_name\": ..., \"text\": ...} per line, as Hugging Face imagefolder).
metadata.jsonl may also give each image's `source` (URL) and `license`.

Creators' opt-outs are honoured: an image is left out when its XMP has an IPTC/PLUS plus:DataMining
DMI-PROHIBITED value or TDMRep tdm:reservation 1, a tdmrep.json in the dataset folder reserves its path, it carries
a noai/noimageai marker (XMP, PNG text, EXIF), its C2PA manifest says ai_training / ai_generative_training
notAllowed, or --opt-out-list names its SHA-256 or source URL. The excluded images are listed with the reason.

Writes OUTPUT/checkpoint-N/ (resumable), OUTPUT/loss.jsonl, OUTPUT/samples/, and the final diffusers folder in OUTPUT;
every model folder also gets dataset_manifest.jsonl (each image, its SHA-256, caption, source, licence and verdict)
and a README.md model card (`sd inspect OUTPUT` prints its data summary).")]
pub struct Args {
    /// Base model (diffusers folder): text encoder, tokenizer, VAE, scheduler, and the UNet to fine-tune
    #[arg(long, short = 'm', env = "SD_MODEL")]
    pub model: String,
    /// Train a freshly initialised UNet from this config.json instead of fine-tuning the model's UNet
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    // Help as an attribute: in a doc comment rustdoc would read its brackets as intra-doc links.
    #[arg(
        long,
        help = "Dataset folder (image + .txt caption pairs, or metadata.jsonl), or procedural:shapes[:N] (demo data)"
    )]
    pub dataset: PathBuf,
    /// Output folder
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Resize every image (shorter side) to R and crop R×R; required when images differ in size
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Crop used with --resolution: center or random
    #[arg(long, default_value = "center")]
    pub crop: String,
    /// Optimizer steps
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Learning rate
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// constant or cosine (both after the linear warmup)
    #[arg(long, default_value = "constant")]
    pub lr_scheduler: String,
    #[arg(long, default_value_t = 0)]
    pub lr_warmup_steps: u64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Clip the gradients' global 2-norm to this value (0 = no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Min-SNR-γ loss weighting (5 is the paper's choice)
    #[arg(long)]
    pub snr_gamma: Option<f64>,
    /// Replace this fraction of captions with the empty prompt, so classifier-free guidance has an unconditional
    /// prediction to push away from (0.1 is the usual choice when training from scratch)
    #[arg(long, default_value_t = 0.0)]
    pub caption_dropout: f64,
    /// Keep an exponential moving average of the UNet weights (saved as the final model)
    #[arg(long)]
    pub ema: bool,
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    /// Train the text encoder too
    #[arg(long)]
    pub train_text_encoder: bool,
    /// f32 or bf16 (bf16 keeps float32 master weights)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda, cuda:N, mps or auto
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write OUTPUT/checkpoint-N every N steps
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Render --sample-prompt images every N steps into OUTPUT/samples
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Prompt for preview images (repeatable)
    #[arg(long)]
    pub sample_prompt: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pub sample_steps: usize,
    /// Continue from OUTPUT/checkpoint-N (optimizer state, step and data order)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Deny list: one SHA-256 (of an image file) or source URL (matched against metadata.jsonl `source`) a line
    #[arg(long, value_name = "FILE")]
    pub opt_out_list: Option<PathBuf>,
    /// Train on images whose rights holders reserved them against AI training too (recorded in the model card)
    #[arg(long)]
    pub ignore_opt_outs: bool,
    /// The model card's `license:` (a Hugging Face licence id); default: the base model card's, else unknown
    #[arg(long)]
    pub license: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let crop: Crop = args.crop.parse().map_err(|e: anyhow::Error| super::UsageError(e.to_string()))?;
    let lr_schedule: LrSchedule =
        args.lr_scheduler.parse().map_err(|e: anyhow::Error| super::UsageError(e.to_string()))?;
    let device_choice: ComputeDevice =
        args.device.parse().map_err(|e: anyhow::Error| super::UsageError(e.to_string()))?;
    let dtype = match args.dtype.as_str() {
        "f32" | "fp32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        other => usage!("--dtype {other} is not supported for training: use f32 or bf16"),
    };
    let device = device_choice.resolve()?;
    if dtype == Kind::BFloat16 && device == Device::Cpu && !CpuFeatures::detect().native_bf16() {
        eprintln!("note: this CPU has no native bf16 instructions; bf16 training will be slower than f32");
    }
    let mut cfg = TrainConfig::new(PathBuf::from(&args.model), args.output.clone());
    cfg.unet_config = args.unet_config;
    cfg.batch_size = args.batch_size;
    cfg.grad_accum = args.grad_accum;
    cfg.max_steps = args.steps;
    cfg.lr = args.lr;
    cfg.lr_schedule = lr_schedule;
    cfg.warmup_steps = args.lr_warmup_steps;
    cfg.adam = sd_train::optim::AdamWConfig {
        beta1: args.adam_beta1,
        beta2: args.adam_beta2,
        eps: args.adam_epsilon,
        weight_decay: args.weight_decay,
    };
    cfg.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    cfg.snr_gamma = args.snr_gamma;
    cfg.caption_dropout = args.caption_dropout;
    cfg.ema_decay = args.ema.then_some(args.ema_decay);
    cfg.dtype = dtype;
    cfg.device = device;
    cfg.seed = args.seed;
    cfg.train_text_encoder = args.train_text_encoder;
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.sample_every = args.sample_every;
    cfg.sample_prompts = args.sample_prompt;
    cfg.sample_steps = args.sample_steps;
    cfg.resume = args.resume;
    cfg.license = args.license;
    if let Err(e) = cfg.validate() {
        usage!("{e}");
    }

    let spec = args.dataset.to_string_lossy().into_owned();
    let dataset = if spec.starts_with("procedural:") {
        sd_train::shapes::dataset(&spec, args.resolution.unwrap_or(32), args.seed)?
    } else {
        let policy = OptOutPolicy {
            deny: match &args.opt_out_list {
                Some(p) => DenyList::read(p)?,
                None => DenyList::default(),
            },
            ignore: args.ignore_opt_outs,
        };
        if args.ignore_opt_outs {
            eprintln!(
                "warning: --ignore-opt-outs: images reserved against AI training are used; the model card says so"
            );
        }
        let ds = Dataset::open_with_policy(&args.dataset, args.resolution, crop, &policy)?;
        eprint!("{}", ds.record.exclusion_report());
        ds
    };
    eprintln!(
        "dataset: {} images of {}×{} from {}",
        dataset.len(),
        dataset.width,
        dataset.height,
        args.dataset.display()
    );
    let mut trainer = Trainer::new(cfg, dataset).context("setting up training")?;
    let first = trainer.step;
    let bar = ProgressBar::new(trainer.cfg.max_steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(first);
    sd_train::run::run(&mut trainer, &mut |ev| match ev {
        Event::Step(r) => {
            bar.set_position(r.step);
            bar.set_message(format!("loss {:.4}  lr {:.2e}  |g| {:.3}", r.loss, r.lr, r.grad_norm));
        }
        Event::Checkpoint(dir) => bar.println(format!("checkpoint: {}", dir.display())),
        Event::Samples(files) => {
            for f in files {
                bar.println(format!("sample: {}", f.display()));
            }
        }
    })?;
    bar.finish();
    eprintln!(
        "trained {} steps; model: {} (loss log: {})",
        trainer.step - first,
        args.output.display(),
        args.output.join("loss.jsonl").display()
    );
    Ok(())
}
