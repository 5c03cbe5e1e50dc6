//! `sd generate`: txt2img, and img2img / inpainting when `--init-image` / `--mask` are given.

use super::model_args::{LoadArgs, RenderArgs};
use super::usage;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sd_core::limits;
use sd_pipeline::generate::Event;
use sd_pipeline::loader::StableDiffusion;
use sd_pipeline::output::OutputOptions;
use sd_pipeline::request::{GenerationRequest, Mode, StepCache};
use std::path::PathBuf;
use std::time::Instant;

/// The `--output` help. clap replaces every `{n}` in help text with a line break and has no escape for it, so the
/// `{` of the `{n}` placeholder is followed by a style reset: invisible on a terminal, and stripped (with all
/// styling) when help goes to a pipe or file, which leaves exactly `{n}`.
fn output_help() -> clap::builder::StyledStr {
    let reset = clap::builder::styling::Reset;
    format!("Output path pattern: {{date}}, {{time}}, {{seed}}, {{{reset}n}} (index within the run), {{model}}").into()
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sd generate --model ./stable-diffusion-v1-5 \"a lighthouse at dawn, oil painting\" --steps 25 --seed 42
  sd generate --model ./sdxl-base \"a red fox\" --sampler \"DPM++ 2M Karras\" --width 1024 --height 1024
  sd generate --model ./sd15 \"a castle\" --init-image sketch.png --strength 0.6
  sd generate --model ./sdxl-base \"a red fox\" --refiner ./sdxl-refiner --refiner-switch 0.8
  sd generate --model ./sd15 \"a castle\" --hires-scale 2 --hires-upscaler Latent --hires-strength 0.6
  sd generate --model ./sd15-inpainting \"a cat\" --init-image photo.png --mask mask.png
  sd generate --model ./sd-turbo \"a cup of coffee\" --steps 1 --cfg-scale 0
  sd generate --model ./sd15 \"a knight, my-style <lora:ink:0.7>\" --lora-dir ./loras --embeddings-dir ./embeddings
  sd generate --model ./sd15 \"a house\" --controlnet ./cn-canny --control-image photo.jpg --control-preprocess canny
  sd generate --model ./sd15 \"a cat\" --ip-adapter models/ip-adapter_sd15.safetensors --ip-image ref.png --ip-scale 0.6
  sd generate --model ./stable-diffusion-3.5-medium \"a red fox\" --steps 28 --cfg-scale 4.5 --no-t5")]
pub struct Args {
    // Help as an attribute: in a doc comment rustdoc would read its brackets as intra-doc links.
    #[arg(help = "The prompt (A1111 syntax: (word:1.2), [word], BREAK, embedding names, <lora:name:weight>)")]
    pub prompt: String,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub sign: super::c2pa::SignArgs,
    #[command(flatten)]
    pub refine: super::refine::RefinerArgs,
    /// What the image should not contain
    #[arg(long, short = 'n', default_value = "")]
    pub negative_prompt: String,
    /// Sampler steps (1 to 1000)
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=limits::GENERATE_MAX_STEPS))]
    pub steps: usize,
    /// Classifier-free guidance; ≤ 1 disables the unconditional pass (Turbo/LCM)
    #[arg(long, default_value_t = 7.0)]
    pub cfg_scale: f64,
    /// Guidance rescale φ in [0, 1] (arXiv 2305.08891)
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Sampler: A1111 name ("Euler a", "DPM++ 2M Karras") or short form (euler-a, dpmpp-2m); see `sd samplers`
    #[arg(long, default_value = "default")]
    pub sampler: String,
    /// Sigma schedule: karras, exponential, beta, ays, ays-sdxl, sgm-uniform, normal (overrides a name's suffix)
    #[arg(long)]
    pub schedule: Option<String>,
    /// Fresh noise per step, for the samplers `sd samplers` lists with --eta (DDIM η, TCD γ, k-diffusion SDE η)
    #[arg(long)]
    pub eta: Option<f64>,
    /// Seed; random when omitted (always printed)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Width in pixels (multiple of 8, at most 8192); default: the model's native size
    #[arg(long, short = 'W', value_parser = clap::value_parser!(i64).range(8..=limits::GENERATE_MAX_SIDE as i64))]
    pub width: Option<i64>,
    /// Height in pixels (multiple of 8, at most 8192); default: the model's native size
    #[arg(long, short = 'H', value_parser = clap::value_parser!(i64).range(8..=limits::GENERATE_MAX_SIDE as i64))]
    pub height: Option<i64>,
    /// Images generated together from one seed (1 to 64)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=limits::GENERATE_MAX_BATCH as i64))]
    pub batch_size: i64,
    /// Batches run one after the other, seed + 1 each
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=limits::GENERATE_MAX_BATCH_COUNT))]
    pub batch_count: u64,
    /// Clip skip, A1111 numbering (1 = last layer, 2 = penultimate)
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// How (word:1.2) weights act: original (A1111 default), no-norm, ignore (syntax parsed, weights unused), none
    #[arg(long, default_value = "original")]
    pub emphasis: String,
    /// Merge a LoRA file into the model: FILE or FILE:WEIGHT (repeatable)
    #[arg(long, value_name = "FILE:WEIGHT")]
    pub lora: Vec<String>,
    /// Start from this image (img2img); with --mask, inpaint
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// Inpainting mask, same size as --init-image; white = repaint
    #[arg(long, requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// How much of the init image to repaint, (0, 1]
    #[arg(long)]
    pub strength: Option<f64>,
    #[command(flatten)]
    pub control: super::control_args::ControlArgs,
    #[command(flatten)]
    pub ip: super::ip_adapter_args::IpAdapterArgs,
    /// Hires fix (A1111): draw at the given size, enlarge by this factor (1–4), repaint with img2img
    #[arg(long, value_name = "FACTOR")]
    pub hires_scale: Option<f64>,
    /// Hires fix to an explicit final size instead of a factor
    #[arg(long, value_name = "WxH")]
    pub hires_resize: Option<String>,
    /// Steps of the hires second pass (default: --steps), shortened by --hires-strength as img2img is
    #[arg(long)]
    pub hires_steps: Option<usize>,
    /// How much of the enlarged picture the second pass repaints, (0, 1]
    #[arg(long, default_value_t = 0.7)]
    pub hires_strength: f64,
    /// How the first pass is enlarged: "Lanczos" (the image, Pillow's filter) or A1111's latent modes: "Latent",
    /// "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
    /// "Latent (nearest-exact)"
    #[arg(long, default_value = "lanczos")]
    pub hires_upscaler: String,
    /// Sampler of the hires second pass (default: --sampler)
    #[arg(long)]
    pub hires_sampler: Option<String>,
    /// Prompt of the hires second pass (default: the prompt)
    #[arg(long)]
    pub hires_prompt: Option<String>,
    /// Negative prompt of the hires second pass (default: --negative-prompt)
    #[arg(long)]
    pub hires_negative_prompt: Option<String>,
    /// Decode with TAESD weights from this folder (fast previews)
    #[arg(long)]
    pub taesd: Option<PathBuf>,
    // Help through `output_help`: clap's help formatter turns a literal `{n}` into a line break.
    #[arg(long, short = 'o', default_value = "outputs/{date}-{seed}-{n}.png", help = output_help())]
    pub output: String,
    /// Replace existing files
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print a machine-readable summary on stdout
    #[arg(long)]
    pub json: bool,
    #[arg(
        long,
        default_value = "off",
        value_name = "MODE[:PARAMS]",
        value_parser = parse_cache,
        help = "Step caching, off by default: deepcache[:interval=N,branch=B] runs the whole UNet every N steps (default 3) and only its shallow branch B (default 0, DeepCache's ids) in between; faster, slightly different images"
    )]
    pub cache: StepCache,
    /// SD3: skip-layer guidance on these transformer blocks, e.g. 7,8,9 for SD3.5 Medium (txt2img with CFG)
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", num_args = 1..)]
    pub slg_layers: Vec<usize>,
    /// SD3: skip-layer guidance scale (diffusers' skip_layer_guidance_scale)
    #[arg(long, default_value_t = 2.8, requires = "slg_layers")]
    pub slg_scale: f64,
    /// SD3: fraction of the steps where skip-layer guidance starts
    #[arg(long, default_value_t = 0.01, requires = "slg_layers")]
    pub slg_start: f64,
    /// SD3: fraction of the steps where skip-layer guidance stops
    #[arg(long, default_value_t = 0.2, requires = "slg_layers")]
    pub slg_stop: f64,
    /// SD3: the CLIP-G encoder's own prompt (diffusers' prompt_2; default: the prompt)
    #[arg(long, value_name = "TEXT")]
    pub prompt_2: Option<String>,
    /// SD3: the T5 encoder's own prompt (diffusers' prompt_3; default: the prompt)
    #[arg(long, value_name = "TEXT")]
    pub prompt_3: Option<String>,
    /// SD3: the CLIP-G encoder's own negative prompt (diffusers' negative_prompt_2)
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt_2: Option<String>,
    /// SD3: the T5 encoder's own negative prompt (diffusers' negative_prompt_3)
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt_3: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    for (flag, text) in [("prompt", &args.prompt), ("--negative-prompt", &args.negative_prompt)] {
        let n = text.chars().count() as u64;
        if n > limits::PROMPT_MAX_CHARS {
            usage!(
                "{}",
                limits::exceeded(
                    format!("the {flag} ({n} characters)"),
                    "prompt length",
                    limits::PROMPT_MAX_CHARS,
                    "characters"
                )
            );
        }
    }
    if args.mask.is_some() && args.init_image.is_none() {
        usage!("--mask needs --init-image");
    }
    if args.strength.is_some() && args.init_image.is_none() {
        usage!("--strength only applies with --init-image");
    }
    // the format comes from the pattern's extension, checked before anything is loaded
    let format = sd_provenance::formats::OutputFormat::from_path(std::path::Path::new(&args.output))
        .map_err(|e| super::UsageError(format!("--output: {e:#}")))?;
    if args.render.quality.is_some() && !format.is_lossy(false) {
        usage!("--quality applies to JPEG and WebP output only (.jpg, .jpeg, .webp)");
    }
    if args.render.lossless && format != sd_provenance::formats::OutputFormat::Webp {
        usage!("--lossless applies to WebP output only (.webp); PNG is always lossless, JPEG never");
    }
    let safety = args.load.safety()?;
    let mut opts = args.load.load_options()?;
    let emphasis: sd_pipeline::prompt::Emphasis =
        args.emphasis.parse().map_err(|e: anyhow::Error| super::UsageError(format!("--emphasis: {e}")))?;
    let schedule: Option<sd_schedulers::Schedule> = args
        .schedule
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| super::UsageError(format!("--schedule: {e:#}")))?;
    let sampler = (args.sampler.parse::<sd_schedulers::SamplerChoice>())
        .map_err(|e| super::UsageError(format!("--sampler: {e:#}")))?
        .with_schedule(schedule);
    let hires = hires_settings(&args)?;
    args.refine.check(args.mask.is_some(), hires.is_some(), !args.control.controlnet.is_empty())?;
    let mut control = args.control.units()?;
    let mut ip_inputs = args.ip.inputs()?;
    if !ip_inputs.is_empty() && args.refine.refiner.is_some() {
        usage!("--ip-adapter with --refiner is not supported: the adapter steers the base model only");
    }
    let loras = collect_loras(&args)?;
    if let Some(policy) = &args.load.policy {
        sd_pipeline::output::check_policy(policy, &args.prompt)?;
    }
    let c2pa = args.sign.identity()?;
    // creators' opt-outs: an init image whose Content Credentials reserve AI inference is refused
    let init_file = match &args.init_image {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            sd_provenance::credentials::check_inference_allowed(&bytes, &p.display().to_string())?;
            Some(std::sync::Arc::new(bytes))
        }
        None => None,
    };
    let mode = match (&args.init_image, &args.mask) {
        (None, _) => Mode::Txt2Img,
        (Some(img), None) => {
            Mode::Img2Img { init: sd_core::image_io::load_rgb(img)?, strength: args.strength.unwrap_or(0.75) }
        }
        (Some(img), Some(mask)) => Mode::Inpaint {
            init: sd_core::image_io::load_rgb(img)?,
            mask: sd_core::image_io::load_luma(mask)?,
            strength: args.strength.unwrap_or(1.0),
        },
    };

    if super::generate_sd3::is_sd3_model(&args.load.model) {
        if !control.is_empty() {
            usage!("--controlnet: ControlNets are supported for SD1, SD2 and SDXL models, not SD3");
        }
        if !ip_inputs.is_empty() {
            usage!("--ip-adapter: IP-Adapters are supported for SD1, SD2 and SDXL models, not SD3");
        }
        if args.refine.refiner.is_some() {
            usage!("--refiner applies to SDXL base models, not SD3");
        }
        if !args.cache.is_off() {
            usage!("--cache {}: step caching works on UNet models (SD1, SD2, SDXL), not SD3's MMDiT", args.cache);
        }
        opts.loras = loras;
        return super::generate_sd3::run(&args, opts, sampler, mode, init_file);
    }
    if !args.slg_layers.is_empty() {
        usage!("--slg-layers (skip-layer guidance) applies to SD3 models only");
    }
    if !args.cache.is_off() && !control.is_empty() {
        usage!(
            "--cache {} does not combine with --controlnet: the residuals feed the deep blocks a cached step skips",
            args.cache
        );
    }
    check_unet_sampler("--sampler", &sampler, &args.load.model)?;
    if let Some(s) = hires.as_ref().and_then(|h| h.sampler.as_ref()) {
        check_unet_sampler("--hires-sampler", s, &args.load.model)?;
    }
    if [&args.prompt_2, &args.prompt_3, &args.negative_prompt_2, &args.negative_prompt_3].iter().any(|p| p.is_some()) {
        usage!("--prompt-2, --prompt-3, --negative-prompt-2 and --negative-prompt-3 apply to SD3 models only");
    }
    if args.load.no_t5 || args.load.max_sequence_length != 256 {
        usage!("--no-t5 and --max-sequence-length apply to SD3 models only");
    }

    let t_load = Instant::now();
    let spinner = (!args.quiet && !args.json).then(|| phase_spinner(&format!("loading {}", args.load.model)));
    opts.taesd = args.taesd.clone();
    opts.loras = loras;
    opts.controlnets = args.control.controlnet.clone();
    let mut sd = StableDiffusion::load(&args.load.model, opts.clone())?;
    for (unit, path) in control.iter_mut().zip(&args.control.controlnet) {
        let loaded = sd.controlnets.iter().find(|c| &c.path == path);
        unit.model = loaded.map(|c| c.name.clone()).context("a --controlnet was not loaded")?;
    }
    args.ip.load(&mut sd, &mut ip_inputs)?;
    let mut refiner = args.refine.load(&sd, &opts)?;
    if let Some(dir) = &args.load.embeddings_dir {
        for note in sd.text.load_embeddings(dir)? {
            eprintln!("embedding skipped: {note}");
        }
    }
    let load_s = t_load.elapsed().as_secs_f64();
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    for l in &sd.loras {
        if !l.ignored.is_empty() {
            eprintln!(
                "warning: LoRA {}: {} key(s) matched nothing in this model and were ignored: {}",
                l.path.display(),
                l.ignored.len(),
                l.ignored.join(", ")
            );
        }
    }

    let (init_w, init_h) = match &mode {
        Mode::Txt2Img => (None, None),
        Mode::Img2Img { init, .. } | Mode::Inpaint { init, .. } => {
            let s = sd.vae_scale_factor().max(8) as u32;
            (Some((init.width() / s * s) as i64), Some((init.height() / s * s) as i64))
        }
    };
    let width = args.width.or(init_w).unwrap_or(sd.info.default_size);
    let height = args.height.or(init_h).unwrap_or(sd.info.default_size);
    let base_seed = args.seed.unwrap_or_else(random_seed);
    let out_opts = OutputOptions {
        pattern: args.output.clone(),
        overwrite: args.overwrite,
        render: sd_pipeline::output::RenderOptions {
            format,
            c2pa: c2pa.map(std::sync::Arc::new),
            init_file,
            ..args.render.options(safety)
        },
    };
    let mut summary = Vec::new();
    let mut index = 0usize;
    let mut encoded = None;
    for batch in 0..args.batch_count {
        let mut req = GenerationRequest::txt2img(&args.prompt, width, height);
        req.negative_prompt = args.negative_prompt.clone();
        req.steps = args.steps;
        req.cfg_scale = args.cfg_scale;
        req.guidance_rescale = args.guidance_rescale;
        req.sampler = sampler;
        req.eta = args.eta;
        req.seed = base_seed.wrapping_add(batch);
        req.batch_size = args.batch_size;
        req.clip_skip = args.clip_skip;
        req.emphasis = emphasis;
        req.mode = mode.clone();
        req.control = control.clone();
        req.ip_adapters = ip_inputs.clone();
        req.cache = args.cache;
        req.validate(sd.vae_scale_factor()).map_err(|e| super::UsageError(format!("{e:#}")))?;
        if !args.json {
            eprintln!("seed {}", req.seed);
        }
        let bar = (!args.quiet && !args.json).then(|| step_bar(req.steps));
        let mut on_event = sd_pipeline::generate::observe(|e| {
            if let Some(bar) = &bar {
                match e {
                    Event::Phase(p) => bar.set_message(*p),
                    Event::Step(s) => {
                        bar.set_length(s.total as u64);
                        bar.set_position(s.index as u64);
                    }
                }
            }
        });
        // Every batch shares the prompts: encode them once, then free the text encoders for the rest of the run.
        if encoded.is_none() {
            // with the hires fix, the prompts' schedules are encoded for both passes
            let first = match &hires {
                Some(h) => sd.encode_prompts_hires(&req, h, &mut on_event)?,
                None => sd.encode_prompts(&req, &mut on_event)?,
            };
            let hires_enc = match &hires {
                Some(h) => sd.encode_hires_prompts(&req, h, &mut on_event)?,
                None => None,
            };
            encoded = Some((first, hires_enc));
            sd.release_text_encoders();
        }
        if let Some(r) = refiner.as_mut() {
            r.encode(&req, &mut on_event)?;
        }
        let (enc, hires_enc) = encoded.as_ref().context("the prompts were not encoded")?;
        let generated = match (&hires, &refiner) {
            (Some(h), _) => sd.generate_hires_with(&req, enc, hires_enc.as_ref(), h, &mut on_event)?,
            (None, Some(r)) => {
                let renc = r.encoded.as_ref().context("the refiner did not encode the prompts")?;
                sd.generate_refined_encoded(&req, enc, &r.model, renc, r.switch, &mut on_event)?
            }
            // The last batch: its latents are all the UNet has left to make. It is freed before the VAE decode,
            // whose activations would otherwise sit on top of its weights at the run's peak (512 px SD1.5 bf16:
            // 2.86-2.90 GB before, 2.33 GB after; README, "Performance and memory").
            (None, None) if batch + 1 == args.batch_count => {
                let stage = sd_pipeline::stage::Stage { output_latents: true, ..Default::default() };
                let (mut generated, latents) = sd.generate_stage(&req, enc, &stage, &mut on_event)?;
                sd.release_denoiser();
                sd.decode_generated(&mut generated, &latents, &mut on_event)?;
                generated
            }
            (None, None) => sd.generate_encoded(&req, enc, &mut on_event)?,
        };
        drop(on_event);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if batch == 0 {
            for w in &generated.sampler_warnings {
                eprintln!("warning: {w}");
            }
        }
        let saved = sd_pipeline::output::save_outputs(&sd, &req, &generated, &out_opts, &mut index)?;
        for s in &saved {
            if !args.json {
                eprintln!("{}", s.describe());
            }
        }
        summary.push(serde_json::json!({
            "seed": generated.seed,
            "timings": generated.timings,
            "unet_calls": generated.unet_calls,
            "shallow_calls": generated.shallow_calls,
            "images": saved,
        }));
    }
    if args.json {
        let v = serde_json::json!({
            "model": sd.name,
            "family": sd.info.family.to_string(),
            "cache": args.cache.to_string(),
            "load_s": load_s,
            "loras": sd.loras.iter().map(|l| serde_json::json!({ "path": l.path, "weight": l.weight, "ignored_keys": l.ignored })).collect::<Vec<_>>(),
            "batches": summary,
            "peak_rss_mb": sd_pipeline::output::peak_rss_mb(),
            "peak_gpu_mb": sd_pipeline::output::peak_gpu_mb(opts.device),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// The hires-fix flags, checked before any model loads.
/// `--cache`, parsed by clap so a bad value exits with 2 before anything loads.
pub(crate) fn parse_cache(s: &str) -> Result<StepCache, String> {
    s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
}

fn hires_settings(args: &Args) -> Result<Option<sd_pipeline::hires::Hires>> {
    if args.hires_scale.is_none() && args.hires_resize.is_none() {
        if args.hires_sampler.is_some() || args.hires_prompt.is_some() || args.hires_negative_prompt.is_some() {
            usage!("--hires-sampler, --hires-prompt and --hires-negative-prompt need --hires-scale or --hires-resize");
        }
        return Ok(None);
    }
    if args.init_image.is_some() {
        usage!("the hires fix (--hires-scale/--hires-resize) applies to txt2img, not with --init-image");
    }
    let resize = match &args.hires_resize {
        Some(s) => {
            let parsed =
                s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
            match parsed {
                Some(wh) => Some(wh),
                None => usage!("--hires-resize {s}: expected WIDTHxHEIGHT, e.g. 1024x1024"),
            }
        }
        None => None,
    };
    let upscaler = args
        .hires_upscaler
        .parse()
        .map_err(|e: anyhow::Error| super::UsageError(format!("--hires-upscaler: {e:#}")))?;
    let sampler = match &args.hires_sampler {
        Some(s) => Some(s.parse().map_err(|e: anyhow::Error| super::UsageError(format!("--hires-sampler: {e:#}")))?),
        None => None,
    };
    let h = sd_pipeline::hires::Hires {
        scale: args.hires_scale.unwrap_or(1.0),
        resize,
        steps: args.hires_steps,
        strength: args.hires_strength,
        upscaler,
        sampler,
        prompt: args.hires_prompt.clone(),
        negative_prompt: args.hires_negative_prompt.clone(),
    };
    h.validate().map_err(|e| super::UsageError(format!("{e:#}")))?;
    Ok(Some(h))
}

/// A flow-matching (SD3) sampler on a UNet model is a usage error, reported before the model loads; the family in
/// the message comes from the folder's configs where they can be read.
fn check_unet_sampler(flag: &str, choice: &sd_schedulers::SamplerChoice, model: &str) -> Result<()> {
    if let sd_schedulers::Sampler::Named(d) = choice.sampler {
        let family = sd_core::model_dir::ModelDir::open(model)
            .ok()
            .and_then(|dir| sd_pipeline::family::ModelInfo::detect(&dir).ok())
            .map_or_else(|| "UNet".to_string(), |i| i.family.to_string());
        sd_schedulers::check_models(d, sd_schedulers::Models::Unet, &family)
            .map_err(|e| super::UsageError(format!("{flag}: {e:#}")))?;
    }
    Ok(())
}

/// `--lora FILE:WEIGHT` flags, then the prompt's `<lora:name:weight>` tags looked up in `--lora-dir`.
fn collect_loras(args: &Args) -> Result<Vec<(PathBuf, f64)>> {
    let mut out: Vec<(PathBuf, f64)> = Vec::new();
    for arg in &args.lora {
        let (path, weight) =
            sd_pipeline::loras::parse_lora_arg(arg).map_err(|e| super::UsageError(format!("{e:#}")))?;
        if !path.is_file() {
            anyhow::bail!("--lora {arg}: {} is not a file", path.display());
        }
        out.push((path, weight));
    }
    let (_, tags) = sd_pipeline::loras::strip_lora_tags(&args.prompt)?;
    for tag in tags {
        let path = sd_pipeline::loras::resolve_lora(&tag.name, args.load.lora_dir.as_deref())?;
        out.push((path, tag.weight));
    }
    for (i, (p, _)) in out.iter().enumerate() {
        let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if out[..i].iter().any(|(q, _)| canon(q) == canon(p)) {
            anyhow::bail!("LoRA {} is given twice (--lora and/or <lora:…> tags); give it once", p.display());
        }
    }
    Ok(out)
}

pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() % (1u64 << 32)
}

fn step_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub(crate) fn phase_spinner(msg: &str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(msg.to_string());
    s.enable_steady_tick(std::time::Duration::from_millis(120));
    s
}
