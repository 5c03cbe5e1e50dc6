//! Jobs on a Stable Diffusion 3 / 3.5 model: the same job model, progress, interrupt/skip/cancel and finished
//! files as the UNet families, run through [`sd_pipeline::sd3::Sd3Pipeline`] exactly as `sd generate` runs an SD3
//! folder, so the same parameters give the same pixels and labels (`<lora:…>` tags included). What SD3 does not
//! run yet (ControlNet units, the hires fix, clip skip) is refused before the job is queued, naming the field. A1111's
//! emphasis modes apply to the CLIP encoders ([`sd_pipeline::sd3_prompt`]).

use crate::engine::{init_images, EngineConfig};
use crate::images;
use crate::job::{JobKind, JobRequest, JobResult, Progress, ResultImage};
use crate::metrics::Metrics;
use crate::store::Control;
use anyhow::{bail, Context, Result};
use sd_pipeline::generate::{Event, Flow};
use sd_pipeline::output::RenderOptions;
use sd_pipeline::sd3::{flow_form, Sd3Init, Sd3Pipeline, Sd3Prompts, Sd3Request};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a set of encoded SD3 prompts depends on: prompt, negative prompt, T5 tokens, whether CFG runs, emphasis.
pub type Sd3PromptKey = (String, String, usize, bool, sd_pipeline::prompt::Emphasis);

/// Load an SD3 folder (a single-file SD3 checkpoint through its converted cache folder) with the server's device and
/// dtype, its `--no-t5` choice and the job's LoRAs merged in.
pub fn load(spec: &str, cfg: &EngineConfig, loras: &[(std::path::PathBuf, f64)]) -> Result<Sd3Pipeline> {
    if cfg.load.offload != sd_pipeline::offload::Offload::None {
        anyhow::bail!("--offload is not supported for SD3 models yet: start the server without it to serve {spec}");
    }
    let root = if sd_pipeline::single_file::is_single_file(spec) {
        sd_pipeline::single_file::converted_folder(Path::new(spec), cfg.load.config_dir.as_deref())?
    } else {
        std::path::PathBuf::from(spec)
    };
    let mut pipe =
        Sd3Pipeline::load_with_loras(&root, sd_pipeline::sd3::dtype_for(&cfg.load), cfg.load.device, cfg.no_t5, loras)?;
    pipe.set_attention_mode(cfg.load.attention);
    Ok(pipe)
}

/// The job fields SD3 cannot honour yet, as (API field, message); checked when a job is submitted (a 400 naming
/// the field) and again on the worker that runs it.
pub fn unsupported(job: &JobRequest) -> Option<(&'static str, String)> {
    let why = |what: &str| format!("{what} is not supported for Stable Diffusion 3 models yet");
    let sampler = job.sampler.parse::<sd_schedulers::SamplerChoice>().and_then(flow_form);
    if let Err(e) = sampler {
        return Some(("sampler_name", format!("{e:#}")));
    }
    if job.refiner.is_some() {
        return Some(("refiner_checkpoint", why("the SDXL refiner")));
    }
    if !job.controlnet.is_empty() {
        return Some(("alwayson_scripts", why("ControlNet")));
    }
    if !job.ip_adapters.is_empty() {
        return Some(("alwayson_scripts", why("IP-Adapter")));
    }
    if job.hires.is_some() {
        return Some(("enable_hr", why("the hires fix (enable_hr)")));
    }
    if job
        .cache
        .as_deref()
        .and_then(|c| c.parse::<sd_pipeline::step_cache::StepCache>().ok())
        .is_some_and(|c| !c.is_off())
    {
        return Some(("sd_rs_step_cache", why("step caching")));
    }
    if job.clip_skip != 1 {
        return Some(("CLIP_stop_at_last_layers", why("clip skip")));
    }
    // The transformer's patches cover 2×2 latents, so sides are multiples of 16 (8 for the UNet families).
    for (f, v) in [("width", job.width), ("height", job.height)] {
        if v % 16 != 0 {
            return Some((f, format!("`{f}` {v}: SD3 models need a multiple of 16; try {}", v / 16 * 16)));
        }
    }
    None
}

/// The pipeline request a job describes, before per-batch seeds.
pub fn to_sd3_request(job: &JobRequest, cfg: &EngineConfig) -> Result<Sd3Request> {
    if let Some((_, msg)) = unsupported(job) {
        bail!(msg);
    }
    let mut r = Sd3Request::new(&job.prompt);
    r.negative_prompt = job.negative_prompt.clone();
    r.width = job.width;
    r.height = job.height;
    r.steps = job.steps;
    r.guidance_scale = job.cfg_scale;
    r.seed = job.seed;
    r.batch_size = job.batch_size;
    r.max_sequence_length = cfg.max_sequence_length;
    r.emphasis = job.emphasis.parse()?;
    let schedule = job.schedule.as_deref().map(str::parse).transpose()?;
    r.sampler = flow_form(job.sampler.parse::<sd_schedulers::SamplerChoice>()?.with_schedule(schedule))?;
    // η for flow-euler-a ("Euler a" on SD3); ignored with a warning by the samplers that take none
    r.eta = job.eta;
    r.init = match job.kind {
        JobKind::Txt2img => None,
        JobKind::Img2img => {
            let (image, mask) = init_images(job)?;
            Some(Sd3Init { image, strength: job.denoising_strength, mask })
        }
    };
    Ok(r)
}

/// Everything one SD3 job needs from the engine.
pub struct Sd3Job<'a> {
    pub pipe: &'a Sd3Pipeline,
    pub cfg: &'a EngineConfig,
    pub metrics: &'a Metrics,
    /// The catalog's name for the model (written into the labels, as `sd generate` writes the folder name).
    pub model_name: &'a str,
    pub render: &'a RenderOptions,
}

impl Sd3Job<'_> {
    /// Run the job's batches into `out`, reusing `cache` when it holds this job's encoded prompts and leaving
    /// them there for the next job.
    pub fn run(
        &self,
        job: &JobRequest,
        ctl: &Control,
        on_progress: &mut dyn FnMut(Progress),
        cache: &mut Option<(Sd3PromptKey, Sd3Prompts)>,
        out: &mut JobResult,
    ) -> Result<()> {
        let base = to_sd3_request(job, self.cfg)?;
        self.pipe.check(&base)?;
        let key: Sd3PromptKey = (
            base.prompt.clone(),
            base.negative_prompt.clone(),
            base.max_sequence_length,
            base.guidance_scale > 1.0,
            base.emphasis,
        );
        let prompts = match cache.take() {
            Some((k, p)) if k == key => p,
            _ => self.pipe.encode(&base)?,
        };
        let result = self.batches(job, &base, &prompts, ctl, on_progress, out);
        *cache = Some((key, prompts));
        result
    }

    fn batches(
        &self,
        job: &JobRequest,
        base: &Sd3Request,
        prompts: &Sd3Prompts,
        ctl: &Control,
        on_progress: &mut dyn FnMut(Progress),
        out: &mut JobResult,
    ) -> Result<()> {
        for batch in 0..job.n_iter {
            if ctl.interrupt.load(Ordering::SeqCst) || ctl.cancel.load(Ordering::SeqCst) {
                break;
            }
            ctl.skip.store(false, Ordering::SeqCst);
            let mut req = base.clone();
            req.seed = job.seed.wrapping_add(u64::from(batch));
            let mut last_step = Instant::now();
            let mut on_event = |e: Event<'_>| -> Flow {
                if let Event::Step(s) = e {
                    self.metrics.step_seconds.observe(last_step.elapsed().as_secs_f64());
                    last_step = Instant::now();
                    on_progress(Progress {
                        step: s.index,
                        steps: s.total,
                        batch,
                        batches: job.n_iter,
                        ..Default::default()
                    });
                }
                ctl.flow()
            };
            let generated = self.pipe.generate_encoded(&req, prompts, &mut on_event)?;
            if ctl.cancel.load(Ordering::SeqCst) {
                bail!("cancelled");
            }
            if generated.interrupted && !ctl.skip.load(Ordering::SeqCst) {
                out.interrupted = true;
            }
            if let Some(images) = &generated.images {
                for r in self.pipe.render(self.model_name, &req, images, self.render)? {
                    let index = batch as usize * job.batch_size as usize + r.index_in_batch;
                    let bytes = r.bytes.context("an SD3 image has no bytes")?;
                    out.images.push(ResultImage {
                        data: images::b64(&bytes),
                        format: r.format,
                        seed: r.seed,
                        infotext: r.infotext,
                        index,
                    });
                }
            }
            if out.interrupted {
                break;
            }
        }
        Ok(())
    }
}
