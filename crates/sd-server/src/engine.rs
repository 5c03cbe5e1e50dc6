//! The inference thread: it owns the loaded model and runs one [`Task`] at a time from the [`Store`]'s queue, so
//! LibTorch work never runs on the async runtime. A job runs exactly as `sd generate` runs the same parameters —
//! prompts encoded once, batch `b` seeded `seed + b`, every image finished by
//! [`sd_pipeline::output::render_outputs`] — so the pixels, watermark and labels are the same.

use crate::catalog::Catalog;
use crate::engine_sd3::{self, Sd3PromptKey};
use crate::images;
use crate::job::{JobId, JobKind, JobRequest, JobResult, Progress, ResultImage};
use crate::metrics::Metrics;
use crate::store::{Control, Store, Task};
use anyhow::{anyhow, bail, Context, Result};
use sd_models::vae::AutoencoderTiny;
use sd_pipeline::family::Family;
use sd_pipeline::generate::{EncodedPrompts, Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::output::RenderOptions;
use sd_pipeline::request::{GenerationRequest, Mode};
use sd_pipeline::sd3::{Sd3Pipeline, Sd3Prompts};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a set of encoded prompts depends on besides the model: prompt, negative prompt, clip skip, emphasis.
type PromptKey = (String, String, usize, String);

/// How the inference thread loads models and finishes images (the `sd generate` flags `sd serve` shares).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Device, dtype, attention, safety checker...; `loras` is filled per request from `<lora:…>` tags.
    pub load: LoadOptions,
    /// Where `<lora:name:weight>` finds `name.safetensors`.
    pub lora_dir: Option<PathBuf>,
    /// Where ControlNet units find their ControlNet folders, by folder name (`crate::controlnet`), and IP-Adapter
    /// units their adapter files, by file stem.
    pub controlnet_dir: Option<PathBuf>,
    /// Image encoder folders IP-Adapter units may use (`--ip-encoder`), tried before `image_encoder/` beside the
    /// adapter file and in the model folder; each adapter takes the first whose output it fits.
    pub ip_encoders: Vec<PathBuf>,
    pub embeddings_dir: Option<PathBuf>,
    pub render: RenderOptions,
    /// Policy file (path as given, text read at start): prompts containing a listed term are refused.
    pub policy: Option<(String, String)>,
    /// TAESD folder for live previews (`current_image`); final images always use the model's own VAE.
    pub preview_taesd: Option<PathBuf>,
    /// A preview every N steps (0 = none).
    pub preview_every: usize,
    /// SD3 models: run without the T5 encoder (`--no-t5`).
    pub no_t5: bool,
    /// SD3 models: T5 tokens per prompt (`--max-sequence-length`).
    pub max_sequence_length: usize,
    /// Step caching for jobs that do not choose (`sd serve --cache`); jobs with ControlNet units run without it.
    pub cache: sd_pipeline::step_cache::StepCache,
}

/// What the HTTP side may read about the engine.
#[derive(Clone, Debug, Default)]
pub struct EngineStatus {
    /// Catalog index of the loaded model.
    pub loaded: Option<usize>,
    /// Catalog index of the model requests run on unless they name another (A1111's `sd_model_checkpoint`).
    pub selected: usize,
    pub loading: bool,
    /// The last load failed (the model stays unloaded until another load succeeds).
    pub load_error: Option<String>,
    pub load_s: f64,
    /// LoRAs merged into the loaded model.
    pub loras: Vec<(PathBuf, f64)>,
    /// Family of the loaded model (`None` for SD3, which has no UNet family).
    pub family: Option<Family>,
    /// Textual-inversion embeddings the loaded model knows, by name.
    pub embeddings: Vec<String>,
    /// The loaded model's native image size.
    pub default_size: Option<i64>,
}

pub type SharedStatus = Arc<Mutex<EngineStatus>>;

/// A freshly loaded model of either kind, before it takes its place in the engine (boxed: both are large and
/// the value only moves once).
enum Loaded {
    Unet(Box<LoadedUnet>),
    Sd3(Box<Sd3Pipeline>),
}

/// A UNet-family model with what the engine loads beside it.
struct LoadedUnet {
    sd: StableDiffusion,
    preview: Option<AutoencoderTiny>,
    /// Names of the textual-inversion embeddings it knows.
    embeddings: Vec<String>,
}

/// The model-owning half of the inference thread: loads models and runs jobs. Where jobs come from — the local
/// [`Store`] ([`Engine::spawn`]) or a Redis stream (`crate::redis_queue::run_worker`) — is up to the caller.
pub struct Engine {
    cfg: EngineConfig,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    sd: Option<StableDiffusion>,
    /// An SD3 / SD3.5 model, when that is what is loaded (then `sd` is `None`).
    sd3: Option<Sd3Pipeline>,
    sd3_prompts: Option<(Sd3PromptKey, Sd3Prompts)>,
    /// The SDXL refiner jobs asked for last (catalog index), kept loaded beside the base for the next job, and
    /// the prompts it encoded.
    refiner: Option<(usize, StableDiffusion)>,
    refiner_prompts: Option<(PromptKey, EncodedPrompts)>,
    preview: Option<AutoencoderTiny>,
    /// The last job's encoded prompts, reused when the next job has the same prompts and settings (A1111 keeps
    /// the same cache): clients often send one prompt many times, and encoding is a fixed cost per request.
    prompt_cache: Option<(PromptKey, EncodedPrompts)>,
}

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, EngineStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Start the inference thread; it loads catalog entry 0 first, then serves the queue until the store stops.
    pub fn spawn(
        cfg: EngineConfig,
        catalog: Arc<Catalog>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        status: SharedStatus,
    ) -> Result<std::thread::JoinHandle<()>> {
        lock(&status).loading = true;
        // Built on the thread itself: a loaded model holds LibTorch handles that never cross threads.
        std::thread::Builder::new()
            .name("sd-inference".into())
            .spawn(move || Engine::new(cfg, catalog, metrics, status).serve_local(&store))
            .context("cannot start the inference thread")
    }

    /// An engine with nothing loaded yet (call [`Self::load_initial`] on the thread that will use it).
    pub fn new(cfg: EngineConfig, catalog: Arc<Catalog>, metrics: Arc<Metrics>, status: SharedStatus) -> Self {
        lock(&status).loading = true;
        Engine {
            cfg,
            catalog,
            metrics,
            status,
            sd: None,
            sd3: None,
            sd3_prompts: None,
            refiner: None,
            refiner_prompts: None,
            preview: None,
            prompt_cache: None,
        }
    }

    /// Load catalog entry 0 (the `--model`); failures are logged and reported by `/ready`.
    pub fn load_initial(&mut self) -> bool {
        match self.ensure(0, Vec::new()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("loading {} failed: {e:#}", self.catalog.entries[0].spec);
                false
            }
        }
    }

    fn serve_local(mut self, store: &Store) {
        self.load_initial();
        while let Some(task) = store.next_task() {
            match task {
                Task::Job { id, request, control } => {
                    let outcome = self.execute(&id, &request, &control, &mut |p| store.set_progress(&id, p));
                    store.finish(&id, outcome);
                }
                Task::Load { model, reply } => {
                    let result = self.switch(&model);
                    let _ = reply.send(result.map_err(|e| format!("{e:#}")));
                }
            }
            self.metrics.queue_depth.set(store.queue_depth() as i64);
        }
        tracing::info!("inference thread stopped");
    }

    /// `POST /sdapi/v1/options {"sd_model_checkpoint": …}`: load and make it the default.
    pub fn switch(&mut self, model: &str) -> Result<String> {
        let idx = self
            .catalog
            .find(model)
            .ok_or_else(|| anyhow!("unknown model {model:?}; available: {}", self.catalog.names().join(", ")))?;
        self.ensure(idx, Vec::new())?;
        lock(&self.status).selected = idx;
        Ok(self.catalog.entries[idx].title())
    }

    /// Make sure catalog entry `idx` is loaded with exactly these LoRAs.
    fn ensure(&mut self, idx: usize, loras: Vec<(PathBuf, f64)>) -> Result<()> {
        {
            let st = lock(&self.status);
            if (self.sd.is_some() || self.sd3.is_some()) && st.loaded == Some(idx) && st.loras == loras {
                return Ok(());
            }
        }
        // Free the old weights first: two full models at once could exceed the memory one needs.
        self.sd = None;
        self.sd3 = None;
        self.sd3_prompts = None;
        // a refiner is checked against its base when loaded
        self.refiner = None;
        self.refiner_prompts = None;
        self.prompt_cache = None;
        self.preview = None;
        {
            let mut st = lock(&self.status);
            st.loading = true;
            st.loaded = None;
        }
        let entry = &self.catalog.entries[idx];
        tracing::info!(model = %entry.spec, loras = loras.len(), "loading model");
        let t0 = Instant::now();
        let result = if entry.is_sd3() {
            engine_sd3::load(&entry.spec, &self.cfg, &loras).map(|p| Loaded::Sd3(Box::new(p)))
        } else {
            self.load_unet(&entry.spec, &loras)
        };
        let load_s = t0.elapsed().as_secs_f64();
        let mut st = lock(&self.status);
        st.loading = false;
        match result {
            Ok(loaded) => {
                self.metrics.model_load_seconds.set(load_s);
                st.loaded = Some(idx);
                st.loras = loras;
                st.load_s = load_s;
                st.load_error = None;
                match loaded {
                    Loaded::Unet(u) => {
                        let LoadedUnet { sd, preview, embeddings } = *u;
                        st.family = Some(sd.info.family);
                        st.default_size = Some(sd.info.default_size);
                        st.embeddings = embeddings;
                        self.sd = Some(sd);
                        self.preview = preview;
                    }
                    Loaded::Sd3(pipe) => {
                        st.family = None;
                        st.default_size = Some(pipe.default_size());
                        st.embeddings = Vec::new();
                        self.sd3 = Some(*pipe);
                    }
                }
                tracing::info!(seconds = load_s, "model loaded");
                Ok(())
            }
            Err(e) => {
                st.load_error = Some(format!("{e:#}"));
                Err(e)
            }
        }
    }

    /// A UNet-family model with the server's textual-inversion embeddings and, when previews are on, TAESD.
    fn load_unet(&self, spec: &str, loras: &[(PathBuf, f64)]) -> Result<Loaded> {
        let mut opts = self.cfg.load.clone();
        opts.loras = loras.to_vec();
        let mut sd = StableDiffusion::load(spec, opts)?;
        if let Some(dir) = &self.cfg.embeddings_dir {
            for note in sd.text.load_embeddings(dir)? {
                tracing::warn!("embedding skipped: {note}");
            }
        }
        let embeddings = sd.text.embeddings().items.iter().map(|e| e.name.clone()).collect();
        let preview = match &self.cfg.preview_taesd {
            Some(dir) if self.cfg.preview_every > 0 => Some(AutoencoderTiny::load_taesd_dir(
                dir,
                sd.info.family == Family::Sdxl,
                tch::Kind::Float,
                sd.opts.device,
            )?),
            _ => None,
        };
        Ok(Loaded::Unet(Box::new(LoadedUnet { sd, preview, embeddings })))
    }

    /// Run one job, reporting progress after every step; a panic inside LibTorch fails the job, not the process.
    pub fn execute(
        &mut self,
        id: &JobId,
        req: &JobRequest,
        ctl: &Control,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<JobResult, String> {
        let t0 = Instant::now();
        // LibTorch reports some errors by panicking through tch; a panic fails this job, not the server.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.generate(req, ctl, on_progress)));
        let outcome = match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("{:#}", sd_pipeline::oom::with_advice(e))),
            Err(p) => {
                let msg = sd_pipeline::oom::panic_text(p.as_ref()).unwrap_or("unknown panic");
                // Running out of GPU memory is the user's to fix (an offload mode, a smaller image): say how.
                if let Some(line) = sd_pipeline::oom::explain_message(msg) {
                    tracing::error!(job = %id, "{line}");
                    Err(line)
                } else {
                    let first = msg.lines().next().unwrap_or(msg);
                    tracing::error!(job = %id, "generation panicked: {first}");
                    Err(format!("internal error while generating: {first}"))
                }
            }
        };
        let label = match &outcome {
            _ if ctl.cancel.load(Ordering::SeqCst) => "cancelled",
            Ok(r) if r.interrupted => "interrupted",
            Ok(_) => "done",
            Err(_) => "failed",
        };
        if let Ok(r) = &outcome {
            self.metrics.images.inc_by(r.images.len() as u64);
        }
        self.metrics.job_finished(label);
        self.metrics.job_seconds.observe(t0.elapsed().as_secs_f64());
        tracing::info!(job = %id, outcome = label, seconds = t0.elapsed().as_secs_f64(), "job finished");
        outcome
    }

    /// The server's rendering with this job's format and quality, and its init image as the C2PA parent
    /// ingredient (the uploaded file itself, so the parent keeps its own manifest).
    fn render_options(&self, req: &JobRequest) -> Result<RenderOptions> {
        let mut render = self.cfg.render.clone();
        render.format = req.format;
        if let Some(q) = req.quality {
            render.quality = q;
        }
        if let Some(l) = req.lossless {
            render.lossless = l;
        }
        render.init_file = match req.init_file.as_deref().or(req.init_image.as_deref()) {
            Some(text) if req.kind == JobKind::Img2img && render.c2pa.is_some() => {
                Some(Arc::new(images::b64_bytes("init_images[0]", text).map_err(api)?))
            }
            _ => None,
        };
        Ok(render)
    }

    /// Make sure catalog entry `idx` is loaded as the refiner of the loaded base (with the base's device and dtype;
    /// no LoRAs, ControlNets or safety checker: those belong to the base).
    fn ensure_refiner(&mut self, idx: usize) -> Result<()> {
        if self.refiner.as_ref().is_some_and(|(i, _)| *i == idx) {
            return Ok(());
        }
        self.refiner = None;
        self.refiner_prompts = None;
        let base = self.sd.as_ref().context("no model is loaded")?;
        let mut opts = self.cfg.load.clone();
        opts.loras.clear();
        opts.controlnets.clear();
        opts.load_safety_checker = false;
        opts.family = None;
        let spec = &self.catalog.entries[idx].spec;
        tracing::info!(refiner = %spec, "loading the refiner");
        let model = sd_pipeline::refiner::load_refiner(base, spec, opts)?;
        self.refiner = Some((idx, model));
        Ok(())
    }

    /// An empty result naming catalog entry `idx` (A1111's title and hash) and the job's start time.
    fn new_result(&self, idx: usize, started: String) -> JobResult {
        let entry = &self.catalog.entries[idx];
        JobResult { model: entry.title(), model_hash: entry.hash(), started, ..Default::default() }
    }

    fn generate(
        &mut self,
        req: &JobRequest,
        ctl: &Control,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<JobResult> {
        let started = timestamp();
        let t0 = Instant::now();
        let idx = match &req.model {
            Some(m) => self
                .catalog
                .find(m)
                .ok_or_else(|| anyhow!("unknown model {m:?}; available: {}", self.catalog.names().join(", ")))?,
            None => lock(&self.status).selected,
        };
        if let Some((source, text)) = &self.cfg.policy {
            sd_pipeline::output::check_policy_terms(text, source, &req.prompt)?;
        }
        let loras = lora_tags(&req.prompt, self.cfg.lora_dir.as_deref())?;
        if self.catalog.entries[idx].is_sd3() {
            if let Some((_, msg)) = engine_sd3::unsupported(req) {
                bail!(msg);
            }
            self.ensure(idx, loras)?;
            let render = self.render_options(req)?;
            let mut out = self.new_result(idx, started);
            let job = engine_sd3::Sd3Job {
                pipe: self.sd3.as_ref().context("no SD3 model is loaded")?,
                cfg: &self.cfg,
                metrics: &self.metrics,
                model_name: &self.catalog.entries[idx].model_name,
                render: &render,
            };
            job.run(req, ctl, on_progress, &mut self.sd3_prompts, &mut out)?;
            out.run_s = t0.elapsed().as_secs_f64();
            return Ok(out);
        }
        self.ensure(idx, loras)?;
        let sd = self.sd.as_mut().context("no model is loaded")?;
        for unit in &req.controlnet {
            let dir = crate::controlnet::resolve(self.cfg.controlnet_dir.as_deref(), &unit.model)?;
            sd.load_controlnet(&dir)?;
        }
        // Loaded adapters stay beside the model for the next job, as ControlNets do.
        let mut ip_names = Vec::with_capacity(req.ip_adapters.len());
        for unit in &req.ip_adapters {
            let path = crate::controlnet::resolve(self.cfg.controlnet_dir.as_deref(), &unit.model)?;
            let mut encoders = self.cfg.ip_encoders.clone();
            encoders.extend(sd.default_ip_encoder_dirs(&path));
            let name = sd
                .load_ip_adapter_among(&path, &encoders)
                .with_context(|| format!("IP-Adapter unit {:?}", unit.model))?;
            ip_names.push(name);
        }
        if let Some(spec) = &req.refiner {
            let ri = self.catalog.find(&spec.model).ok_or_else(|| {
                anyhow!("unknown refiner {:?}; available: {}", spec.model, self.catalog.names().join(", "))
            })?;
            self.ensure_refiner(ri)?;
        }
        let sd = self.sd.as_ref().context("no model is loaded")?;
        let refiner = match &req.refiner {
            Some(spec) => Some((&self.refiner.as_ref().context("the refiner is not loaded")?.1, spec.switch_at)),
            None => None,
        };
        let mut base = to_generation_request(req, sd)?;
        base.cache = job_cache(req, self.cfg.cache)?;
        for (input, name) in base.ip_adapters.iter_mut().zip(ip_names) {
            input.model = name;
        }
        base.validate(sd.vae_scale_factor())?;
        let hires = req.hires.as_ref().map(|h| h.to_hires()).transpose()?;
        let render = self.render_options(req)?;

        let mut out = self.new_result(idx, started);
        let key: PromptKey =
            (base.prompt.clone(), base.negative_prompt.clone(), base.clip_skip, base.emphasis.to_string());
        let mut encoded = match self.prompt_cache.take() {
            // Prompt schedules depend on the steps: reuse only encodings that hold every text this run needs.
            Some((k, e)) if k == key && sd.encoded_covers(&e, &base, hires.as_ref()) => Some(e),
            _ => None,
        };
        let mut refiner_encoded = match (self.refiner_prompts.take(), refiner) {
            (Some((k, e)), Some((r, _))) if k == key && r.encoded_covers(&e, &base, None) => Some(e),
            _ => None,
        };
        for batch in 0..req.n_iter {
            if ctl.interrupt.load(Ordering::SeqCst) || ctl.cancel.load(Ordering::SeqCst) {
                break;
            }
            ctl.skip.store(false, Ordering::SeqCst);
            let mut g = base.clone();
            g.seed = req.seed.wrapping_add(u64::from(batch));
            let mut last_step = Instant::now();
            let preview = self.preview.as_ref();
            let every = self.cfg.preview_every;
            let metrics = &self.metrics;
            let batches = req.n_iter;
            let mut on_event = |e: Event<'_>| -> Flow {
                if let Event::Step(s) = e {
                    metrics.step_seconds.observe(last_step.elapsed().as_secs_f64());
                    last_step = Instant::now();
                    let mut p = Progress { step: s.index, steps: s.total, batch, batches, ..Default::default() };
                    if let Some(taesd) = preview {
                        if every > 0 && s.index % every == 0 && s.index < s.total {
                            if let Some(png) = preview_of(taesd, s.latents) {
                                p.preview = Some(images::b64(&png));
                                p.preview_step = s.index;
                            }
                        }
                    }
                    on_progress(p);
                }
                ctl.flow()
            };
            if encoded.is_none() {
                encoded = Some(match &hires {
                    Some(h) => sd.encode_prompts_hires(&g, h, &mut on_event)?,
                    None => sd.encode_prompts(&g, &mut on_event)?,
                });
            }
            if let (Some((r, _)), None) = (refiner, &refiner_encoded) {
                refiner_encoded = Some(r.encode_prompts(&g, &mut on_event)?);
            }
            let enc = encoded.as_ref().context("the prompts were not encoded")?;
            let generated = match (&hires, refiner, &refiner_encoded) {
                (Some(h), _, _) => sd.generate_hires_encoded(&g, enc, h, &mut on_event)?,
                (None, Some((r, switch)), Some(renc)) => {
                    sd.generate_refined_encoded(&g, enc, r, renc, switch, &mut on_event)?
                }
                _ => sd.generate_encoded(&g, enc, &mut on_event)?,
            };
            if ctl.cancel.load(Ordering::SeqCst) {
                bail!("cancelled");
            }
            let skipped = ctl.skip.load(Ordering::SeqCst);
            if generated.interrupted && !skipped {
                out.interrupted = true;
            }
            let rendered = sd_pipeline::output::render_outputs(sd, &g, &generated, &render)?;
            for r in rendered {
                let index = batch as usize * req.batch_size as usize + r.index_in_batch;
                match r.bytes {
                    Some(bytes) => out.images.push(ResultImage {
                        data: images::b64(&bytes),
                        format: r.format,
                        seed: r.seed,
                        infotext: r.infotext,
                        index,
                    }),
                    None => out.blocked.push(index),
                }
            }
            if out.interrupted {
                break;
            }
        }
        if let Some(e) = refiner_encoded {
            self.refiner_prompts = Some((key.clone(), e));
        }
        if let Some(e) = encoded {
            self.prompt_cache = Some((key, e));
        }
        out.run_s = t0.elapsed().as_secs_f64();
        Ok(out)
    }
}

/// The `<lora:name:weight>` tags of a prompt, resolved inside the LoRA folder (names cannot leave it).
pub fn lora_tags(prompt: &str, dir: Option<&std::path::Path>) -> Result<Vec<(PathBuf, f64)>> {
    let (_, tags) = sd_pipeline::loras::strip_lora_tags(prompt)?;
    let mut out: Vec<(PathBuf, f64)> = Vec::new();
    for tag in tags {
        let path = sd_pipeline::loras::resolve_lora(&tag.name, dir)?;
        if out.iter().any(|(p, _)| p == &path) {
            bail!("<lora:{}> appears twice in the prompt; give it once", tag.name);
        }
        out.push((path, tag.weight));
    }
    Ok(out)
}

/// The pipeline request a job describes (images decoded, names parsed), before per-batch seeds.
pub fn to_generation_request(req: &JobRequest, sd: &StableDiffusion) -> Result<GenerationRequest> {
    let mut g = GenerationRequest::txt2img(&req.prompt, req.width, req.height);
    g.negative_prompt = req.negative_prompt.clone();
    g.steps = req.steps;
    g.cfg_scale = req.cfg_scale;
    let schedule = req.schedule.as_deref().map(str::parse).transpose()?;
    g.sampler = req.sampler.parse::<sd_schedulers::SamplerChoice>()?.with_schedule(schedule);
    g.eta = req.eta;
    g.seed = req.seed;
    g.batch_size = req.batch_size;
    g.clip_skip = req.clip_skip;
    g.emphasis = req.emphasis.parse()?;
    g.mode = match req.kind {
        JobKind::Txt2img => Mode::Txt2Img,
        JobKind::Img2img => match init_images(req)? {
            (init, None) => Mode::Img2Img { init, strength: req.denoising_strength },
            (init, Some(mask)) => Mode::Inpaint { init, mask, strength: req.denoising_strength },
        },
    };
    g.control = req.controlnet.iter().map(crate::controlnet::to_input).collect::<Result<_>>()?;
    g.ip_adapters = req.ip_adapters.iter().map(crate::controlnet::ip_input).collect::<Result<_>>()?;
    let _ = sd;
    Ok(g)
}

/// The step cache a job runs with: its own choice, else the server's default unless ControlNet units feed the
/// deep blocks a cached step would skip (the combination `sd generate` refuses).
pub fn job_cache(
    req: &JobRequest,
    default: sd_pipeline::step_cache::StepCache,
) -> Result<sd_pipeline::step_cache::StepCache> {
    match &req.cache {
        Some(c) => c.parse(),
        None if req.controlnet.is_empty() => Ok(default),
        None => Ok(sd_pipeline::step_cache::StepCache::Off),
    }
}

/// An img2img job's init image and (inpainting) its mask, inverted when the job asks (A1111's
/// `inpainting_mask_invert`). Sizes were checked against the server's limits when the job was submitted.
pub fn init_images(req: &JobRequest) -> Result<(image::RgbImage, Option<image::GrayImage>)> {
    let max = u64::MAX;
    let text = req.init_image.as_deref().context("img2img needs an init image")?;
    let init =
        images::decode("init_images[0]", &images::b64_bytes("init_images[0]", text).map_err(api)?, max).map_err(api)?;
    let mask = match &req.mask {
        None => None,
        Some(m) => {
            let mut mask =
                images::decode("mask", &images::b64_bytes("mask", m).map_err(api)?, max).map_err(api)?.to_luma8();
            if req.mask_invert {
                image::imageops::invert(&mut mask);
            }
            Some(mask)
        }
    };
    Ok((init.to_rgb8(), mask))
}

fn api(e: crate::error::ApiError) -> anyhow::Error {
    anyhow!(e.message)
}

/// First image of a latent batch through TAESD, as a PNG.
fn preview_of(taesd: &AutoencoderTiny, latents: &tch::Tensor) -> Option<Vec<u8>> {
    let first = latents.f_narrow(0, 0, 1).ok()?.f_to_kind(tch::Kind::Float).ok()?;
    let img = tch::no_grad(|| taesd.decode(&first)).ok()?;
    let img = img.f_clamp(0.0, 1.0).ok()?.f_select(0, 0).ok()?.to_device(tch::Device::Cpu);
    let rgb = sd_core::image_io::tensor_to_rgb(&img, sd_core::image_io::Range::Unit).ok()?;
    images::preview_png(&rgb)
}

/// UTC now as `YYYYMMDDhhmmss` (A1111's `job_timestamp`).
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = sd_pipeline::output::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}", t / 3600, t % 3600 / 60, t % 60)
}
