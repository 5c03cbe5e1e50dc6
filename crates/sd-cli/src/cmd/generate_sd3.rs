//! `sd generate` on a Stable Diffusion 3 / 3.5 folder: txt2img, img2img and inpainting through `sd_pipeline::sd3` (the flags
//! the UNet families take and SD3 does not yet are refused by name).

use super::generate::{phase_spinner, random_seed, Args};
use super::usage;
use anyhow::{Context, Result};
use sd_pipeline::loader::LoadOptions;
use sd_pipeline::output::OutputOptions;
use sd_pipeline::request::Mode;
use sd_pipeline::sd3::{Sd3Init, Sd3Pipeline, Sd3Request};
use sd_schedulers::SamplerChoice;
use std::path::Path;
use std::time::Instant;

/// Whether `spec` names a diffusers SD3 folder (checked from its configs) or a single-file SD3 checkpoint (from
/// its tensor names).
pub fn is_sd3_model(spec: &str) -> bool {
    if sd_pipeline::single_file::is_single_file(spec) {
        return sd_pipeline::single_file::is_sd3_file(Path::new(spec));
    }
    sd_core::model_dir::ModelDir::open(spec).is_ok_and(|d| sd_pipeline::sd3::is_sd3(&d))
}

/// `mode` and `init_file` as `sd generate` read them (the init image's own bytes: the C2PA parent ingredient).
pub fn run(
    args: &Args,
    opts: LoadOptions,
    sampler: SamplerChoice,
    mode: Mode,
    init_file: Option<std::sync::Arc<Vec<u8>>>,
) -> Result<()> {
    let init = match mode {
        Mode::Txt2Img => None,
        Mode::Img2Img { init, strength } => Some(Sd3Init { image: init, strength, mask: None }),
        Mode::Inpaint { init, mask, strength } => Some(Sd3Init { image: init, strength, mask: Some(mask) }),
    };
    let refused: [(bool, &str); 6] = [
        (args.load.embeddings_dir.is_some(), "--embeddings-dir"),
        (args.taesd.is_some(), "--taesd"),
        (args.clip_skip != 1, "--clip-skip"),
        (args.guidance_rescale != 0.0, "--guidance-rescale"),
        (opts.low_memory, "--low-memory"),
        (opts.offload != sd_pipeline::offload::Offload::None, "--offload"),
    ];
    if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
        usage!(
            "{what} is not supported for SD3 models yet (SD3 runs txt2img, img2img and inpainting with the flow-matching samplers)"
        );
    }
    let emphasis: sd_pipeline::prompt::Emphasis =
        args.emphasis.parse().map_err(|e: anyhow::Error| super::UsageError(format!("--emphasis: {e}")))?;
    // `--sampler euler` on SD3 means its flow-matching form, as in ComfyUI and Forge
    let sampler = sd_pipeline::sd3::flow_form(sampler).map_err(|e| super::UsageError(format!("--sampler: {e:#}")))?;
    if let Some(policy) = &args.load.policy {
        sd_pipeline::output::check_policy(policy, &args.prompt)?;
        for text in [&args.prompt_2, &args.prompt_3].into_iter().flatten() {
            sd_pipeline::output::check_policy(policy, text)?;
        }
    }
    let safety = args.load.safety()?;
    let t_load = Instant::now();
    let spinner = (!args.quiet && !args.json).then(|| phase_spinner(&format!("loading {}", args.load.model)));
    let root = if sd_pipeline::single_file::is_single_file(&args.load.model) {
        sd_pipeline::single_file::converted_folder(Path::new(&args.load.model), opts.config_dir.as_deref())?
    } else {
        sd_core::model_dir::ModelDir::open(&args.load.model)?.root
    };
    let dtype = sd_pipeline::sd3::dtype_for(&opts);
    // In stages, so SD3.5 Large fits a 24 GB machine: the text encoders encode the prompts (the same for every
    // batch) and are freed, then the transformer loads; the last batch frees it before its VAE decode.
    let mut pipe = Sd3Pipeline::load_staged(&root, dtype, opts.device, args.load.no_t5, &opts.loras)?;
    pipe.set_attention_mode(opts.attention);
    let mut load_s = t_load.elapsed().as_secs_f64();
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    // a single file is named by its own stem, not by the cache folder it was converted into
    let named = if sd_pipeline::single_file::is_single_file(&args.load.model) {
        Path::new(&args.load.model).file_stem()
    } else {
        Path::new(&root).file_name()
    };
    let name = named.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // the same format, watermark method and Content Credentials as the other families (checked earlier in generate)
    let format = sd_provenance::formats::OutputFormat::from_path(Path::new(&args.output))?;
    let render = sd_pipeline::output::RenderOptions {
        format,
        c2pa: args.sign.identity()?.map(std::sync::Arc::new),
        init_file,
        ..args.render.options(safety)
    };
    let out_opts = OutputOptions { pattern: args.output.clone(), overwrite: args.overwrite, render };
    let base_seed = args.seed.unwrap_or_else(random_seed);
    let mut summary = Vec::new();
    let mut counter = 0usize;
    let mut prompts = None;
    let mut encode_s = 0.0;
    for batch in 0..args.batch_count {
        let mut req = Sd3Request::new(&args.prompt);
        req.negative_prompt = args.negative_prompt.clone();
        req.prompt_2 = args.prompt_2.clone();
        req.prompt_3 = args.prompt_3.clone();
        req.negative_prompt_2 = args.negative_prompt_2.clone();
        req.negative_prompt_3 = args.negative_prompt_3.clone();
        // img2img without -W/-H keeps the init image's size, rounded down to what the transformer takes
        let f = pipe.size_multiple();
        let init_size = init.as_ref().map(|i| ((i.image.width() as i64 / f * f), (i.image.height() as i64 / f * f)));
        req.width = args.width.or(init_size.map(|s| s.0)).unwrap_or(pipe.default_size());
        req.height = args.height.or(init_size.map(|s| s.1)).unwrap_or(pipe.default_size());
        req.init = init.clone();
        req.slg = (!args.slg_layers.is_empty()).then(|| sd_pipeline::sd3::SkipLayerGuidance {
            layers: args.slg_layers.clone(),
            scale: args.slg_scale,
            start: args.slg_start,
            stop: args.slg_stop,
        });
        req.steps = args.steps;
        req.guidance_scale = args.cfg_scale;
        req.seed = base_seed.wrapping_add(batch);
        req.batch_size = args.batch_size;
        req.max_sequence_length = args.load.max_sequence_length;
        req.emphasis = emphasis;
        req.sampler = sampler;
        req.eta = args.eta;
        if !args.json {
            eprintln!("seed {}", req.seed);
        }
        pipe.check(&req).map_err(|e| super::UsageError(format!("{e:#}")))?;
        if prompts.is_none() {
            for w in pipe.sampler(&req)?.warnings() {
                eprintln!("warning: {w}");
            }
            let t = Instant::now();
            prompts = Some(pipe.encode(&req)?);
            pipe.release_text_encoders();
            encode_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let spinner = (!args.quiet && !args.json).then(|| phase_spinner("loading the transformer"));
            pipe.load_transformer()?;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            load_s += t.elapsed().as_secs_f64();
            for l in pipe.loras.iter().filter(|l| !l.ignored.is_empty()) {
                eprintln!(
                    "warning: LoRA {}: {} key(s) matched nothing in this model and were ignored: {}",
                    l.path.display(),
                    l.ignored.len(),
                    l.ignored.join(", ")
                );
            }
        }
        let encoded = prompts.as_ref().context("the prompts were not encoded")?;
        let t0 = Instant::now();
        let (latents, _, _) = pipe.denoise_encoded(&req, encoded, &mut sd_pipeline::generate::quiet())?;
        if batch + 1 == args.batch_count {
            pipe.release_transformer();
        }
        let images = tch::no_grad(|| pipe.decode(&latents))?;
        let gen_s = t0.elapsed().as_secs_f64();
        let saved = pipe.save_images(&name, &req, &images, &out_opts, &mut counter)?;
        for s in &saved {
            if !args.json {
                eprintln!("{}", s.describe());
            }
        }
        summary.push(serde_json::json!({ "seed": req.seed, "generate_s": gen_s, "images": saved }));
    }
    if args.json {
        let v = serde_json::json!({
            "model": name,
            "family": "sd3",
            "t5": pipe.has_t5(),
            "loras": pipe.loras.iter().map(|l| serde_json::json!({ "path": l.path, "weight": l.weight, "ignored_keys": l.ignored })).collect::<Vec<_>>(),
            "load_s": load_s,
            "encode_s": encode_s,
            "batches": summary,
            "peak_rss_mb": sd_pipeline::output::peak_rss_mb(),
            "peak_gpu_mb": sd_pipeline::output::peak_gpu_mb(opts.device),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
