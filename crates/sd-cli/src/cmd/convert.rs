//! `sd convert`: a single-file checkpoint from a model site (`.safetensors` or `.ckpt`, LDM layout) → a diffusers
//! folder that `sd generate --model DIR` and Python diffusers' `from_pretrained` both load. Pickled `.ckpt` files
//! are read without executing anything (see `sd_models::convert::pickle`). A single-file ControlNet (original
//! lllyasviel layout, a ControlNet 1.0 bundle, or diffusers' layout in one file) becomes a diffusers ControlNet
//! folder instead (`config.json` + `diffusion_pytorch_model.safetensors`), which `--controlnet DIR` loads.

use crate::cmd::usage;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use sd_models::convert::{self, sd3_encoders::Encoder, writer::WriteOptions, ConvertOptions, Family, Only, Prediction};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Checkpoint or single-file ControlNet to convert (.safetensors, or a PyTorch zip .ckpt/.pt/.pth)
    pub input: PathBuf,
    /// Destination folder (written atomically: it appears only when complete)
    #[arg(long, short)]
    pub output: PathBuf,
    /// Store float weights as f16, bf16 or f32 [default: keep the checkpoint's dtype]
    #[arg(long)]
    pub dtype: Option<String>,
    /// Model family: auto, sd1, sd2, sdxl, sdxl-refiner
    #[arg(long, default_value = "auto")]
    pub family: String,
    /// Prediction type for the scheduler: auto (SD2 → v unless it is SD2-base), epsilon, v
    #[arg(long, default_value = "auto")]
    pub prediction: String,
    /// Use the EMA copy of the UNet weights (`model_ema.*`)
    #[arg(long)]
    pub ema: bool,
    /// Convert only one part: unet, vae or text
    #[arg(long)]
    pub only: Option<String>,
    /// Take the VAE from this file instead (a VAE-only .safetensors/.ckpt)
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// A diffusers folder whose unet/vae/text_encoder configs (and tokenizers) describe this checkpoint; for a
    /// ControlNet, a diffusers ControlNet folder whose config.json describes it [default for a ControlNet: the
    /// ControlNet config.json in the file's folder, else inferred from the shapes]; for SD3, a diffusers SD3
    /// folder: its configs and tokenizers, and the text encoders the file lacks, are taken from it
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// SD3: the CLIP-L text encoder from a file of its own (ComfyUI's `clip_l.safetensors`; transformers layout)
    #[arg(long, value_name = "FILE")]
    pub clip_l: Option<PathBuf>,
    /// SD3: the CLIP-G text encoder from a file of its own (ComfyUI's `clip_g.safetensors`)
    #[arg(long, value_name = "FILE")]
    pub clip_g: Option<PathBuf>,
    /// SD3: the T5-XXL encoder from a file of its own (`t5xxl_fp16.safetensors`, `t5xxl_fp8_e4m3fn.safetensors`)
    #[arg(long, value_name = "FILE")]
    pub t5: Option<PathBuf>,
    /// SD3: the T5 tokenizer (ComfyUI's `t5_tokenizer/` folder, or a `tokenizer.json` / `spiece.model` file), which
    /// cannot be rebuilt from the weights
    #[arg(long, value_name = "PATH")]
    pub t5_tokenizer: Option<PathBuf>,
    /// Replace the output folder if it exists
    #[arg(long)]
    pub overwrite: bool,
    /// Drop tensors that fit no mapping rule instead of failing (they are listed)
    #[arg(long)]
    pub allow_unknown_keys: bool,
    /// CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) for the tokenizer files [default: .sd-data/]
    #[arg(long)]
    pub vocab: Option<PathBuf>,
}

fn parse(args: &Args) -> Result<(ConvertOptions, Option<Kind>)> {
    let family = match args.family.as_str() {
        "auto" => None,
        f => match Family::parse(f) {
            Some(f) => Some(f),
            None => usage!("--family must be auto, sd1, sd2, sdxl or sdxl-refiner (got `{f}`)"),
        },
    };
    let prediction = match args.prediction.as_str() {
        "auto" => Prediction::Auto,
        "epsilon" | "eps" => Prediction::Epsilon,
        "v" | "v_prediction" | "v-prediction" => Prediction::V,
        p => usage!("--prediction must be auto, epsilon or v (got `{p}`)"),
    };
    let only = match args.only.as_deref() {
        None => None,
        Some("unet") => Some(Only::Unet),
        Some("vae") => Some(Only::Vae),
        Some("text") => Some(Only::Text),
        Some(o) => usage!("--only must be unet, vae or text (got `{o}`)"),
    };
    let dtype = match args.dtype.as_deref() {
        None => None,
        Some("f16" | "fp16" | "float16") => Some(Kind::Half),
        Some("bf16" | "bfloat16") => Some(Kind::BFloat16),
        Some("f32" | "fp32" | "float32") => Some(Kind::Float),
        Some(d) => usage!("--dtype must be f16, bf16 or f32 (got `{d}`)"),
    };
    if let Some(d) = &args.config_dir {
        if !d.is_dir() {
            usage!("--config-dir {} is not a folder", d.display());
        }
    }
    let opts = ConvertOptions {
        family,
        prediction,
        ema: args.ema,
        only,
        config_dir: args.config_dir.clone(),
        allow_unknown: args.allow_unknown_keys,
    };
    Ok((opts, dtype))
}

/// `.sd-data/bpe_simple_vocab_16e6.txt.gz` in the current folder or above it, or above the executable.
/// What a conversion leaves behind, grouped by reason, and the unrecognised tensors `--allow-unknown-keys` dropped.
fn report_left_out(ignored: &[(String, &str)], unknown: &[String]) {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, r) in ignored {
        *reasons.entry(r).or_default() += 1;
    }
    for (r, n) in reasons {
        eprintln!("  left out {n} tensor(s): {r}");
    }
    if !unknown.is_empty() {
        eprintln!("  dropped {} unrecognised tensor(s) (--allow-unknown-keys):", unknown.len());
        for k in unknown.iter().take(20) {
            eprintln!("    {k}");
        }
    }
}

/// The first SD3-only flag given, if any.
fn sd3_flag(args: &Args) -> Option<&'static str> {
    [
        ("--clip-l", args.clip_l.is_some()),
        ("--clip-g", args.clip_g.is_some()),
        ("--t5", args.t5.is_some()),
        ("--t5-tokenizer", args.t5_tokenizer.is_some()),
    ]
    .into_iter()
    .find_map(|(f, set)| set.then_some(f))
}

/// The checkpoint-only flags (`--family`, `--prediction`, `--ema`, `--only`, `--vae`) refused for a file that is
/// `what` (a ControlNet, an SD3 checkpoint): usage error naming the first one given.
fn refuse_checkpoint_flags(args: &Args, opts: &ConvertOptions, what: &str) -> Result<()> {
    let stray = [
        ("--family", opts.family.is_some()),
        ("--prediction", opts.prediction != Prediction::Auto),
        ("--ema", opts.ema),
        ("--only", opts.only.is_some()),
        ("--vae", args.vae.is_some()),
    ];
    if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
        usage!("{flag} does not apply to {}: it is {what}", args.input.display());
    }
    Ok(())
}

/// The progress bar of every conversion: tensors written, and the component being written as its message.
fn tensor_bar(len: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}") {
        pb.set_style(style);
    }
    pb
}

fn find_vocab() -> Option<PathBuf> {
    let rel = Path::new(".sd-data").join("bpe_simple_vocab_16e6.txt.gz");
    let mut starts = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    if let Ok(e) = std::env::current_exe() {
        starts.push(e);
    }
    for s in starts {
        for dir in s.ancestors() {
            let p = dir.join(&rel);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

pub fn run(args: Args) -> Result<()> {
    let (opts, dtype) = parse(&args)?;
    if args.output.exists() && !args.overwrite {
        usage!("{} already exists (pass --overwrite to replace it)", args.output.display());
    }
    let src = convert::open(&args.input)?;
    if let Some(layout) = convert::controlnet::detect(&src.names()) {
        return run_controlnet(&args, &opts, dtype, src.as_ref(), layout);
    }
    if convert::sd3::detect(&src.names()) {
        return run_sd3(&args, &opts, dtype, src.as_ref());
    }
    if let Some(flag) = sd3_flag(&args) {
        usage!("{flag} applies to SD3 / SD3.5 checkpoints; {} is not one", args.input.display());
    }
    let vae = match &args.vae {
        Some(p) => Some(convert::open(p).with_context(|| format!("--vae {}", p.display()))?),
        None => None,
    };
    let plan = convert::plan_checkpoint(src.as_ref(), vae.as_deref(), &opts)?;
    eprintln!(
        "{}: {}{}, {} prediction, {} tensors → {}",
        args.input.display(),
        plan.family.name(),
        if plan.inpainting { " (inpainting)" } else { "" },
        plan.prediction_type,
        plan.items.len(),
        plan.components().iter().map(|c| c.folder()).collect::<Vec<_>>().join(", ")
    );
    report_left_out(&plan.ignored, &plan.unknown);
    let wopts = WriteOptions {
        dtype,
        overwrite: args.overwrite,
        config_dir: args.config_dir.clone(),
        vocab: args.vocab.clone().or_else(find_vocab),
        pipeline: opts.only.is_none(),
    };
    let pb = tensor_bar(plan.items.len());
    let mut sources: Vec<&dyn convert::TensorSource> = vec![src.as_ref()];
    if let Some(v) = &vae {
        sources.push(v.as_ref());
    }
    let result = convert::writer::write_folder(&plan, &sources, &args.output, &wopts, |done, _, item| {
        pb.set_position(done as u64);
        pb.set_message(item.component.folder());
    });
    pb.finish_and_clear();
    result?;
    println!("{}", args.output.display());
    Ok(())
}

/// `sd convert` of a single-file ControlNet: the checkpoint-only flags do not apply and are refused.
fn run_controlnet(
    args: &Args,
    opts: &ConvertOptions,
    dtype: Option<Kind>,
    src: &dyn convert::TensorSource,
    layout: convert::controlnet::Layout,
) -> Result<()> {
    refuse_checkpoint_flags(args, opts, "a ControlNet, not a Stable Diffusion checkpoint")?;
    if let Some(flag) = sd3_flag(args) {
        usage!("{flag} applies to SD3 / SD3.5 checkpoints; {} is a ControlNet", args.input.display());
    }
    let given = match &args.config_dir {
        Some(d) => Some(
            convert::controlnet::GivenConfig::read(&d.join("config.json"))
                .with_context(|| format!("--config-dir {}", d.display()))?,
        ),
        None => convert::controlnet::GivenConfig::beside(&args.input)?,
    };
    let plan = convert::controlnet::plan(src, given.as_ref(), opts.allow_unknown)?;
    eprintln!(
        "{}: ControlNet ({}), {} tensors, config {} → {}",
        args.input.display(),
        layout.describe(),
        plan.items.len(),
        plan.config_origin.as_ref().map_or("inferred from the shapes".to_string(), |p| format!("from {}", p.display())),
        args.output.display()
    );
    if !plan.ignored.is_empty() {
        eprintln!("  left out {} tensor(s) of the bundled Stable Diffusion model", plan.ignored.len());
    }
    report_left_out(&[], &plan.unknown);
    let pb = tensor_bar(plan.items.len());
    let result =
        convert::writer::write_controlnet_folder(&plan, src, &args.output, dtype, args.overwrite, |done, _, _| {
            pb.set_position(done as u64)
        });
    pb.finish_and_clear();
    result?;
    println!("{}", args.output.display());
    Ok(())
}

/// `sd convert` of a single-file SD3 / SD3.5 checkpoint: the UNet-family flags do not apply and are refused; what the
/// file lacks (text encoders, the T5 tokenizer) is said after the conversion.
fn run_sd3(args: &Args, opts: &ConvertOptions, dtype: Option<Kind>, src: &dyn convert::TensorSource) -> Result<()> {
    refuse_checkpoint_flags(args, opts, "an SD3 / SD3.5 checkpoint")?;
    let mut opened = Vec::new();
    for (enc, path) in [(Encoder::ClipL, &args.clip_l), (Encoder::ClipG, &args.clip_g), (Encoder::T5, &args.t5)] {
        if let Some(p) = path {
            opened.push((
                enc,
                p.as_path(),
                convert::open(p).with_context(|| format!("{} {}", enc.flag(), p.display()))?,
            ));
        }
    }
    let files: Vec<(Encoder, &Path, &dyn convert::TensorSource)> =
        opened.iter().map(|(e, p, s)| (*e, *p, s.as_ref())).collect();
    let joined = convert::sd3_encoders::join(src, &files)?;
    let src: &dyn convert::TensorSource = &joined;
    let mut plan = convert::sd3::plan(src, args.config_dir.as_deref(), opts.allow_unknown)?;
    if let Some(t) = &args.t5_tokenizer {
        plan.use_t5_tokenizer(t).map_err(|e| super::UsageError(format!("{e:#}")))?;
    }
    let cfg = &plan.configs[&convert::Component::Transformer];
    eprintln!(
        "{}: SD3 ({} blocks{}{}), {} tensors, transformer config {} → {}",
        args.input.display(),
        cfg["num_layers"],
        if cfg["qk_norm"].is_null() { "" } else { ", qk norm" },
        if cfg["dual_attention_layers"].as_array().is_some_and(|a| !a.is_empty()) { ", dual attention" } else { "" },
        plan.items.len(),
        plan.config_origin.as_ref().map_or("inferred from the shapes".to_string(), |p| format!("from {}", p.display())),
        plan.components().iter().map(|c| c.folder()).collect::<Vec<_>>().join(", ")
    );
    for (c, from) in &plan.copied {
        eprintln!("  {} copied from {}", c.folder(), from.display());
    }
    let mut ignored = plan.ignored.clone();
    ignored.extend(joined.dropped.iter().cloned());
    report_left_out(&ignored, &plan.unknown);
    let wopts = WriteOptions {
        dtype,
        overwrite: args.overwrite,
        config_dir: args.config_dir.clone(),
        vocab: args.vocab.clone().or_else(find_vocab),
        pipeline: true,
    };
    let pb = tensor_bar(plan.items.len());
    let result = convert::writer::write_sd3_folder(&plan, src, &args.output, &wopts, |done, _, item| {
        pb.set_position(done as u64);
        pb.set_message(item.component.folder());
    });
    pb.finish_and_clear();
    result?;
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    println!("{}", args.output.display());
    Ok(())
}
