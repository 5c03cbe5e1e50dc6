//! The generation loop, in diffusers' order so that the same seed gives the same image:
//! encode prompts → prepare latents (initial noise, or an encoded image noised to `strength`) →
//! loop { UNet on [uncond, cond], guidance, sampler step, (legacy inpaint: re-impose the known region) } →
//! decode → post-process to [0, 1].
//!
//! Every random draw comes from one [`TorchGenerator`] seeded once: VAE posterior samples (img2img/inpaint),
//! then the initial noise, then the samplers' per-step noise — the order of `diffusers`' pipelines.

use crate::init_image::{prepare_init, prepare_mask, Prepared};
use crate::loader::StableDiffusion;
use crate::prompt::composable::PromptPlan;
use crate::prompt::schedule::Pass;
use crate::prompt::scheduled::ScheduledConditioning;
use crate::prompt::PromptSettings;
use crate::request::{GenerationRequest, Mode};
use anyhow::{bail, Context, Result};
use sd_core::TorchGenerator;
use sd_models::unet::AddedCond;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What the pipeline reports while it works. The caller answers each event with a [`Flow`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A phase starts: `"encode"`, `"denoise"` or `"decode"`.
    Phase(&'static str),
    /// A sampler step has finished.
    Step(StepInfo<'a>),
}

/// One finished sampler step, with the latents after it (previews, prompt schedules, progress, interrupts).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Steps done so far, from 1.
    pub index: usize,
    /// Steps this request runs (img2img: after `strength` shortened the schedule).
    pub total: usize,
    /// The timestep the step started from.
    pub timestep: f64,
    /// The latents after this step, `[batch, channels, h, w]` in the UNet's dtype and device.
    pub latents: &'a Tensor,
}

/// The caller's answer to an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop denoising before the next step and decode the latents reached so far (AUTOMATIC1111's "Interrupt":
    /// the result is returned, marked [`Generated::interrupted`]). Before the first step there is nothing to decode
    /// and the result holds no images.
    Interrupt,
}

/// A callback for callers that neither watch nor interrupt.
pub fn quiet() -> impl FnMut(Event<'_>) -> Flow {
    |_| Flow::Continue
}

/// A callback that only watches (progress bars, logs) and never interrupts.
pub fn observe(mut f: impl FnMut(&Event<'_>)) -> impl FnMut(Event<'_>) -> Flow {
    move |e| {
        f(&e);
        Flow::Continue
    }
}

/// Seconds spent per phase.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub denoise_s: f64,
    pub decode_s: f64,
}

/// The images of one request, `[3, H, W]` float in [0, 1] on the CPU, before 8-bit quantisation.
pub struct Generated {
    pub images: Vec<Tensor>,
    pub seed: u64,
    pub timings: Timings,
    /// Number of UNet evaluations (steps × passes), for reporting.
    pub unet_calls: usize,
    /// Of those, the evaluations a step cache ran shallow (`--cache`; 0 when off).
    pub shallow_calls: usize,
    /// The sampler actually used, by its A1111 name ("Euler a", "DPM++ 2M"), for the parameters chunk.
    pub sampler_label: String,
    /// A1111 "Schedule type" ("Karras", "Exponential", ...), `None` for the sampler's own default.
    pub schedule_label: Option<String>,
    /// What building the sampler let pass (scheduler config keys no sampler reads, an `eta` it does not take).
    pub sampler_warnings: Vec<String>,
    /// Textual-inversion embeddings the prompts used (name, file), prompt's first, for A1111's `TI hashes`.
    pub embeddings_used: Vec<(String, PathBuf)>,
    /// The caller answered [`Flow::Interrupt`]: the images show the latents after [`Self::steps_done`] steps.
    pub interrupted: bool,
    /// Sampler steps run (equal to the schedule's length unless interrupted).
    pub steps_done: usize,
    /// Set when a hires-fix second pass made these images (its strength and infotext pairs).
    pub hires: Option<crate::hires::HiresApplied>,
    /// Set when an SDXL refiner finished these images (its infotext pairs).
    pub refiner: Option<crate::refiner::RefinerApplied>,
}

/// A request's prompts, encoded: what the denoising loop needs from the text encoders. Encoding once lets a
/// caller free the text encoders before the UNet runs (see [`StableDiffusion::release_text_encoders`]).
pub struct EncodedPrompts {
    /// Every text of the prompt's schedules (and `AND` parts) and the negative prompt's, encoded once.
    prompts: ScheduledConditioning,
    embeddings_used: Vec<(String, PathBuf)>,
    encode_s: f64,
    /// What was encoded, so a request with other prompt settings cannot be paired with it by mistake.
    key: (String, String, usize, crate::prompt::Emphasis),
}

fn prompt_key(req: &GenerationRequest) -> (String, String, usize, crate::prompt::Emphasis) {
    (req.prompt.clone(), req.negative_prompt.clone(), req.clip_skip, req.emphasis)
}

impl StableDiffusion {
    /// Run one request (one batch of `batch_size` images from one seed).
    pub fn generate(&self, req: &GenerationRequest, on_event: &mut dyn FnMut(Event<'_>) -> Flow) -> Result<Generated> {
        let encoded = self.encode_prompts(req, on_event)?;
        self.generate_encoded(req, &encoded, on_event)
    }

    /// Step 1 alone: the request's prompt and negative prompt through the text encoder(s), every text their
    /// schedules use over `req.steps` once.
    pub fn encode_prompts(
        &self,
        req: &GenerationRequest,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<EncodedPrompts> {
        self.encode_prompts_for(req, &[Pass::Base { steps: req.steps }], on_event)
    }

    /// [`Self::encode_prompts`] for a request run with the hires fix: the second pass's schedule texts too.
    pub fn encode_prompts_hires(
        &self,
        req: &GenerationRequest,
        hires: &crate::hires::Hires,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<EncodedPrompts> {
        let second = Pass::Hires { first_steps: req.steps, steps: hires.steps.unwrap_or(req.steps) };
        self.encode_prompts_for(req, &[Pass::Base { steps: req.steps }, second], on_event)
    }

    pub(crate) fn encode_prompts_for(
        &self,
        req: &GenerationRequest,
        passes: &[Pass],
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<EncodedPrompts> {
        if self.text.is_empty() {
            bail!(
                "the text encoders of {} were released after encoding; load the model again to encode new prompts",
                self.name
            );
        }
        // An interrupt while encoding takes effect at the first step (there is nothing to stop yet).
        let _ = on_event(Event::Phase("encode"));
        let _streaming = self.offload.activate(crate::offload::Group::TextEncoders)?;
        let t0 = Instant::now();
        let settings = PromptSettings { clip_skip: req.clip_skip, emphasis: req.emphasis, style: self.encoder_style() };
        let prompt = self.prompt_without_lora_tags(&req.prompt)?;
        let plan = PromptPlan::new(&prompt, &req.negative_prompt)?;
        let empty_negative = req.negative_prompt.is_empty();
        let prompts =
            tch::no_grad(|| ScheduledConditioning::encode(&self.text, plan, passes, empty_negative, &settings))?;
        let texts: Vec<&str> = prompts.texts().collect();
        let embeddings_used = self.embeddings_used(&texts, req.emphasis)?;
        Ok(EncodedPrompts { prompts, embeddings_used, encode_s: t0.elapsed().as_secs_f64(), key: prompt_key(req) })
    }

    /// Whether `encoded` holds every text a run of `req` (with `hires`, if given) needs; a cache check for callers
    /// that keep encoded prompts across requests.
    pub fn encoded_covers(
        &self,
        encoded: &EncodedPrompts,
        req: &GenerationRequest,
        hires: Option<&crate::hires::Hires>,
    ) -> bool {
        let plan = &encoded.prompts.plan;
        let base = plan.schedules(Pass::Base { steps: req.steps });
        let second = hires.map(|h| Pass::Hires { first_steps: req.steps, steps: h.steps.unwrap_or(req.steps) });
        encoded.key == prompt_key(req)
            && encoded.prompts.covers(&base)
            && second.is_none_or(|p| encoded.prompts.covers(&plan.schedules(p)))
    }

    /// Free the text encoders' weights (a one-shot run needs them only until its prompts are encoded; for SDXL
    /// that is 1.6 GB in bf16). Requests can then only run through [`Self::generate_encoded`].
    pub fn release_text_encoders(&mut self) {
        self.text.release();
        self.offload.release(crate::offload::Group::TextEncoders);
        sd_core::alloc::release_free_memory();
    }

    /// Steps 2–6 for prompts encoded by [`Self::encode_prompts`] from a request with the same prompt settings.
    pub fn generate_encoded(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        Ok(self.generate_stage(req, encoded, &crate::stage::Stage::default(), on_event)?.0)
    }

    /// [`Self::generate_encoded`] for one [`crate::stage::Stage`]; also returns the final latents. The prompt
    /// schedules are laid over the stage's pass (a hires second pass counts its `[from:to:when]` on from the first,
    /// as A1111).
    pub fn generate_stage(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        stage: &crate::stage::Stage,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(Generated, Tensor)> {
        let unet = self.unet()?;
        let pass = stage.pass.unwrap_or(Pass::Base { steps: req.steps });
        let scale = self.vae_scale_factor();
        req.validate(scale)?;
        if self.info.inpainting && !matches!(req.mode, Mode::Inpaint { .. }) {
            bail!("{} is an inpainting model (9-channel UNet): give --init-image and --mask", self.name);
        }
        if self.info.refiner && matches!(req.mode, Mode::Txt2Img) && stage.latents.is_none() {
            bail!(
                "{} is an SDXL refiner: it repaints an image (--init-image) or finishes an SDXL base (--refiner)",
                self.name
            );
        }
        if encoded.key != prompt_key(req) {
            bail!("these encoded prompts belong to another request (prompt, negative prompt, clip skip or emphasis differ)");
        }
        let device = self.opts.device;
        let opts = sd_schedulers::SamplerOptions { eta: req.eta, ..Default::default() };
        let mut sched =
            req.sampler.build(&self.scheduler_config, &opts).with_context(|| format!("sampler `{}`", req.sampler))?;
        sd_schedulers::check_models(sched.descriptor(), sd_schedulers::Models::Unet, &self.info.family.to_string())?;
        let (sampler_label, schedule_label) = labels(sched.as_ref());
        let sampler_warnings = sched.warnings().to_vec();
        let encode_s = encoded.encode_s;
        let embeddings_used = encoded.embeddings_used.clone();
        let cfg = req.cfg_scale > 1.0;
        let b = req.batch_size;
        // Prompt schedules and AND parts (A1111): the conditioning in force is looked up per step below.
        let schedules = encoded.prompts.plan.schedules(pass);
        let weights: Vec<f64> = schedules.parts.iter().map(|(w, _)| *w).collect();
        if !cfg && !encoded.prompts.plan.is_plain() {
            bail!("AND parts and prompt weights (`text :1.2`) need classifier-free guidance (a CFG scale above 1)");
        }
        if req.guidance_rescale > 0.0 && weights.len() > 1 {
            bail!("guidance rescale does not combine with AND parts");
        }
        let copies = if cfg { 1 + weights.len() as i64 } else { 1 };
        let dtype = encoded.prompts.at(&schedules, 0, 1, false)?.hidden.kind();

        // 2. Timesteps (img2img/inpaint start part-way, as diffusers' get_timesteps; a stage may cut both ends).
        let (begin, end) = stage.timestep_range(sched.as_mut(), req, device)?;
        let timesteps: Vec<f64> = sched.timesteps()[begin..end].to_vec();

        // 3. Latents.
        let mut gen = TorchGenerator::new(req.seed);
        let (h, w) = (req.height / scale, req.width / scale);
        let latent_channels = self.vae.config().latent_channels;
        let shape = [b, latent_channels, h, w];
        let scaling = self.vae.config().scaling_factor;
        let vae_kind = self.vae_kind();
        let mut inpaint: Option<InpaintState> = None;
        let encodes = stage.latents.is_none() && !matches!(req.mode, Mode::Txt2Img);
        let streaming = if encodes { self.offload.activate(crate::offload::Group::Vae)? } else { None };
        let mut latents = match &req.mode {
            _ if stage.latents.is_some() => {
                stage.start_latents(sched.as_ref(), &mut gen, shape, dtype, timesteps[0])?
            }
            Mode::Txt2Img => gen.randn(&shape, dtype, device) * sched.init_noise_sigma(),
            Mode::Img2Img { init, .. } => {
                let image = prepare_init(init, req.width, req.height, vae_kind, device);
                let z = tch::no_grad(|| self.vae.encode(&image))?.sample(&mut gen) * scaling;
                let z = z.to_kind(dtype).repeat([b, 1, 1, 1]);
                let noise = gen.randn(&shape, dtype, device);
                sched.add_noise(&z, &noise, timesteps[0])?
            }
            Mode::Inpaint { init, mask, strength } => {
                let Prepared { image, mask, masked } =
                    prepare_mask(init, mask, req.width, req.height, vae_kind, device);
                let strength_max = *strength == 1.0;
                let nine = self.info.inpainting;
                let image_latents = if !nine || !strength_max {
                    let z = tch::no_grad(|| self.vae.encode(&image))?.sample(&mut gen) * scaling;
                    Some(z.to_kind(dtype).repeat([b, 1, 1, 1]))
                } else {
                    None
                };
                let noise = gen.randn(&shape, dtype, device);
                // Below strength 1 the image latents were encoded above, so they are always present here.
                let latents = match &image_latents {
                    Some(z) if !strength_max => sched.add_noise(z, &noise, timesteps[0])?,
                    _ => &noise * sched.init_noise_sigma(),
                };
                let mask_lat =
                    mask.upsample_nearest2d([h, w], None::<f64>, None::<f64>).to_kind(dtype).repeat([b, 1, 1, 1]);
                // diffusers encodes the masked image even for 4-channel UNets, which never use it: the draw
                // from the generator still happens, and later sampler noise depends on it.
                let z = tch::no_grad(|| self.vae.encode(&masked))?.sample(&mut gen) * scaling;
                let masked_lat = nine.then(|| z.to_kind(dtype).repeat([b, 1, 1, 1]));
                inpaint = Some(InpaintState { mask: mask_lat, masked_latents: masked_lat, image_latents, noise });
                latents
            }
        };

        // 4. Extra conditioning: SDXL size ids (the pooled text follows the schedule), LCM guidance embedding. The
        // ids' unconditional rows come first, then one block of conditional rows per AND part.
        let time_ids = {
            let ids = crate::stage::sdxl_time_ids(self, req, b, cfg).to_kind(dtype).to_device(device);
            if cfg && copies > 2 {
                let halves = ids.chunk(2, 0);
                let mut rows = vec![halves[0].shallow_clone()];
                rows.extend((1..copies).map(|_| halves[1].shallow_clone()));
                Tensor::cat(&rows, 0)
            } else {
                ids
            }
        };
        let timestep_cond = unet
            .config()
            .time_cond_proj_dim
            .map(|dim| guidance_scale_embedding(req.cfg_scale - 1.0, dim, b).to_kind(dtype).to_device(device));

        // ControlNet maps: at the image size, [0, 1], once per batch item (and per guidance half).
        if copies > 2 && !req.control.is_empty() {
            bail!("ControlNet units do not combine with AND parts yet");
        }
        let control = crate::control::prepare(self, req, cfg, dtype, device)?;
        // IP-Adapter tokens: the picture is encoded once; every UNet call attends to them.
        let ip_units = crate::ip_adapter::prepare(self, req, cfg, copies, dtype, device)?;
        let ip_hook = (!ip_units.is_empty()).then(|| sd_models::ip_adapter::IpAdapterHook { units: ip_units });
        // Step cache (off by default): decides per evaluation between the whole UNet and a shallow pass.
        let mut cache = crate::step_cache::CacheRun::new(req.cache, unet, !req.control.is_empty())?;

        // 5. Denoising loop (the image encoding above is done: its streaming guard ends before the UNet's starts).
        drop(streaming);
        let _streaming = self.offload.activate(crate::offload::Group::Denoiser)?;
        let t1 = Instant::now();
        let total = timesteps.len();
        let mut unet_calls = 0;
        let mut interrupted = on_event(Event::Phase("denoise")) == Flow::Interrupt;
        let mut steps_done = 0;
        for (i, &t) in timesteps.iter().enumerate() {
            if interrupted {
                break;
            }
            // A1111 counts UNet-guided steps from 0; samplers that call the UNet more than once per step (Heun)
            // spread the schedule over their calls.
            let step = if total > pass.steps() { i * pass.steps() / total } else { i };
            let conds = encoded.prompts.at(&schedules, step, b, cfg)?;
            let hidden = conds.hidden;
            let added = conds.pooled.map(|text_embeds| AddedCond { text_embeds, time_ids: time_ids.shallow_clone() });
            let noise_pred = tch::no_grad(|| -> Result<Tensor> {
                let input = latents.repeat([copies, 1, 1, 1]);
                let mut input = sched.scale_model_input(&input, t)?;
                let t_tensor = Tensor::from(t as f32).to_device(device);
                let residuals =
                    crate::control::residuals(&control, i, total, cfg, &input, &t_tensor, &hidden, added.as_ref())?;
                if let Some(st) = &inpaint {
                    if let Some(masked) = &st.masked_latents {
                        let (m, z) = (st.mask.repeat([copies, 1, 1, 1]), masked.repeat([copies, 1, 1, 1]));
                        input = Tensor::cat(&[input, m, z], 1);
                    }
                }
                let inputs = sd_models::unet::UNetInputs {
                    added: added.as_ref(),
                    timestep_cond: timestep_cond.as_ref(),
                    down_block_additional_residuals: residuals.as_ref().map(|r| r.down.as_slice()),
                    mid_block_additional_residual: residuals.as_ref().map(|r| &r.mid),
                    attention_hook: ip_hook.as_ref().map(|h| h as &dyn sd_models::unet::AttentionHook),
                    ..Default::default()
                };
                // DeepCache counts steps by the timestep's first position in the loop's schedule.
                let index = timesteps.iter().position(|&x| x == t).unwrap_or(i);
                let out = cache.evaluate(unet, index, &input, &t_tensor, &hidden, &inputs)?;
                Ok(if cfg {
                    // A1111's combine_denoised: uncond + Σ wᵢ·cfg·(condᵢ − uncond); one part of weight 1 is CFG.
                    let parts = out.chunk(copies, 0);
                    let u = &parts[0];
                    // A fold, not `+=`: tch's `+=` is in place and `u` must stay intact for every part.
                    let guided = parts[1..]
                        .iter()
                        .zip(&weights)
                        .fold(u.shallow_clone(), |g, (c, w)| g + (c - u) * (w * req.cfg_scale));
                    if req.guidance_rescale > 0.0 {
                        rescale_noise_cfg(&guided, &parts[1], req.guidance_rescale)
                    } else {
                        guided
                    }
                } else {
                    out
                })
            })?;
            unet_calls += 1;
            latents = tch::no_grad(|| sched.step(&noise_pred, t, &latents, &mut gen))?;
            if let Some(st) = &inpaint {
                if st.masked_latents.is_none() {
                    let known =
                        st.image_latents.as_ref().map(|z| z.shallow_clone()).unwrap_or_else(|| latents.zeros_like());
                    let known = match timesteps.get(i + 1) {
                        Some(&next) => sched.add_noise(&known, &st.noise, next)?,
                        None => known,
                    };
                    latents = (1.0 - &st.mask) * known + &st.mask * &latents;
                }
            }
            steps_done = i + 1;
            let info = StepInfo { index: i + 1, total, timestep: t, latents: &latents };
            interrupted = on_event(Event::Step(info)) == Flow::Interrupt;
        }
        let denoise_s = t1.elapsed().as_secs_f64();

        let timings = Timings { encode_s, denoise_s, decode_s: 0.0 };
        let mut generated = Generated {
            images: Vec::new(),
            seed: req.seed,
            timings,
            unet_calls,
            shallow_calls: cache.shallow,
            sampler_label,
            schedule_label,
            sampler_warnings,
            embeddings_used,
            interrupted,
            steps_done,
            hires: None,
            refiner: None,
        };
        // 6. Decode what was reached.
        if !stage.output_latents {
            self.decode_generated(&mut generated, &latents, on_event)?;
        }
        Ok((generated, latents))
    }

    /// Step 6 alone, for a run made with [`crate::stage::Stage::output_latents`]: decode `latents` into
    /// `generated`'s images (nothing when it was interrupted before its first step) and time it. A one-shot caller
    /// can [`Self::release_denoiser`] in between.
    pub fn decode_generated(
        &self,
        generated: &mut Generated,
        latents: &Tensor,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<()> {
        if generated.steps_done == 0 && generated.interrupted {
            return Ok(());
        }
        let t = Instant::now();
        let _ = on_event(Event::Phase("decode"));
        let images = tch::no_grad(|| self.decode(latents))?;
        generated.images = (0..images.size()[0]).map(|i| images.get(i)).collect();
        generated.timings.decode_s = t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The prompt text to encode: `<lora:…>` tags removed, each checked against the LoRAs merged at load (a
    /// LoRA changes the weights, so it must be chosen when loading: see [`crate::loras`]).
    pub fn prompt_without_lora_tags(&self, prompt: &str) -> Result<String> {
        let (text, tags) = crate::loras::strip_lora_tags(prompt)?;
        for tag in &tags {
            let loaded = self.loras.iter().find(|l| l.name == tag.name);
            match loaded {
                Some(l) if (l.weight - tag.weight).abs() <= 1e-9 => {}
                Some(l) => bail!(
                    "the prompt asks for <lora:{}:{}> but the model was loaded with that LoRA at weight {}",
                    tag.name, tag.weight, l.weight
                ),
                None => bail!(
                    "the prompt asks for <lora:{}> but that LoRA was not merged when the model was loaded (LoadOptions.loras)",
                    tag.name
                ),
            }
        }
        Ok(text)
    }

    /// Embeddings named in `lines` (first use order, each once), as the first text encoder's chunking finds them.
    fn embeddings_used(&self, lines: &[&str], emphasis: crate::prompt::Emphasis) -> Result<Vec<(String, PathBuf)>> {
        let set = self.text.embeddings();
        let mut used: Vec<usize> = Vec::new();
        if set.items.is_empty() {
            return Ok(Vec::new());
        }
        for line in lines {
            for chunk in crate::prompt::conditioning::chunks_for(&self.text, 0, line, emphasis)? {
                for fix in chunk.fixes {
                    if !used.contains(&fix.embedding) {
                        used.push(fix.embedding);
                    }
                }
            }
        }
        Ok(used.into_iter().filter_map(|i| set.items.get(i)).map(|e| (e.name.clone(), e.path.clone())).collect())
    }

    fn vae_kind(&self) -> Kind {
        self.vae.kind()
    }

    /// UNet latents → images in [0, 1], `[B, 3, H, W]` f32 on the CPU.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let _streaming = self.offload.activate(crate::offload::Group::Vae)?;
        // One heap-only stretch for the whole decode: the automatic tiling below decodes tile by tile, and each
        // tile's own guard would otherwise hand the heap back (and fault it in again) between tiles.
        let _heap = sd_core::alloc::HeapOnly::new();
        let image = match &self.taesd {
            Some(taesd) => taesd.decode(&latents.to_kind(self.vae_kind()))?.to_kind(Kind::Float).clamp(0.0, 1.0),
            None => {
                let cfg = self.vae.config();
                let z = latents.to_kind(Kind::Float) / cfg.scaling_factor;
                let z = match cfg.shift_factor {
                    Some(s) => z + s,
                    None => z,
                };
                let z = z.to_kind(self.vae_kind());
                let (scale, size) = (self.vae.scale_factor(), z.size());
                let (h, w) = (size[2] * scale, size[3] * scale);
                let x = if self.vae.tiling().is_none()
                    && crate::memory::vae_decode_needs_tiling(cfg, size[0], h, w, self.vae_kind(), self.opts.device)
                {
                    let tiling = sd_models::vae::TilingConfig::for_config(cfg);
                    sd_models::vae::tiled_decode(&z, &tiling, scale, |tile| self.vae.decode(tile))?
                } else {
                    self.vae.decode(&z)?
                };
                (x.to_kind(Kind::Float) / 2.0 + 0.5).clamp(0.0, 1.0)
            }
        };
        Ok(image.to_device(tch::Device::Cpu))
    }
}

/// A1111's names for the sampler and schedule a built scheduler really uses.
fn labels(sched: &dyn sd_schedulers::Scheduler) -> (String, Option<String>) {
    let schedule = sched.schedule().and_then(|s| s.a1111_label()).map(String::from);
    (sched.descriptor().label().to_string(), schedule)
}

struct InpaintState {
    mask: Tensor,
    masked_latents: Option<Tensor>,
    image_latents: Option<Tensor>,
    noise: Tensor,
}

/// Guidance rescale (arXiv 2305.08891 §3.4): match the guided prediction's std to the text prediction's.
fn rescale_noise_cfg(guided: &Tensor, text: &Tensor, phi: f64) -> Tensor {
    let dims: Vec<i64> = (1..guided.dim() as i64).collect();
    let std_text = text.std_dim(dims.as_slice(), true, true);
    let std_cfg = guided.std_dim(dims.as_slice(), true, true);
    let rescaled = guided * (std_text / std_cfg);
    rescaled * phi + guided * (1.0 - phi)
}

/// LCM's guidance-scale embedding (sinusoidal in w·1000), as diffusers' `get_guidance_scale_embedding`.
fn guidance_scale_embedding(w: f64, dim: i64, batch: i64) -> Tensor {
    let w = Tensor::from_slice(&vec![(w * 1000.0) as f32; batch as usize]);
    let half = dim / 2;
    let step = (10000f64).ln() / (half - 1) as f64;
    let freqs = (Tensor::arange(half, (Kind::Float, tch::Device::Cpu)) * -step).exp();
    let args = w.unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.sin(), args.cos()], 1);
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}
