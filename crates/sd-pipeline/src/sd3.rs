//! Stable Diffusion 3 / 3.5 as diffusers' `StableDiffusion3Pipeline` runs it, so the same seed gives the same image:
//!
//! - prompt encoding (`encode_prompt`): CLIP-L and CLIP-G penultimate hidden states (no final layer norm)
//!   concatenated on the feature axis and zero-padded to T5's width, T5's last hidden state appended along the
//!   sequence (`max_sequence_length` tokens, default 256), pooled = CLIP-L and CLIP-G projected pooled outputs
//!   concatenated. Without T5 (`no_t5`, as diffusers with `text_encoder_3=None`) its part is zeros of the
//!   transformer's `joint_attention_dim`, so the 4.7 B-parameter encoder need not be loaded. The negative prompt
//!   (default "") is encoded the same way. The prompts are read with A1111's syntax (`(word:1.2)`, `[word]`,
//!   `BREAK`, 75-token CLIP chunks; weights on the CLIP part only, as A1111's SD3 does: [`crate::sd3_prompt`]); a
//!   plain prompt of at most 75 tokens encodes exactly as diffusers'.
//! - latents: unit noise `[B, 16, H/8, W/8]` drawn from the one seeded generator in the transformer's dtype; for
//!   img2img (`StableDiffusion3Img2ImgPipeline`) the init image's VAE posterior sample (the generator's first
//!   draw), shifted and scaled, then noised to the first kept timestep with `scale_noise` (the second draw);
//!   inpainting (`StableDiffusion3InpaintPipeline`, 16-channel transformers) also re-imposes the kept region after
//!   every step: the init latents noised to the next timestep, blended in through the binarised mask;
//! - loop: the transformer on [uncond, cond] with timestep σ·1000, classifier-free guidance when the scale > 1, the
//!   flow-matching sampler's step (the model's own `FlowMatchEulerDiscreteScheduler` unless another flow sampler is
//!   chosen; with `use_dynamic_shifting` in its config the schedule's shift comes from the image's token count, as
//!   diffusers' `calculate_shift` computes `mu`);
//! - decode: latents / scaling_factor + shift_factor through the 16-channel VAE, then (x / 2 + 0.5) clamped.

use crate::generate::{Event, Flow, StepInfo};
use crate::loras::{LoraMerger, MergedLora};
use crate::prompt::lora::LoraTarget;
use crate::prompt::Emphasis;
use crate::sd3_memory::{check_fits, Residency, Sd3Weights};
pub use crate::sd3_prompt::ClipEncoder;
use anyhow::{bail, ensure, Context, Result};
use sd_core::model_dir::ModelDir;
use sd_core::TorchGenerator;
use sd_models::attention::AttentionMode;
use sd_models::clip::{ClipTextModel, ClipTokenizer};
use sd_models::t5::{T5EncoderModel, T5Tokenizer};
use sd_models::transformer_sd3::{SD3Transformer2DModel, SD3TransformerConfig};
use sd_models::vae::AutoencoderKL;
use sd_schedulers::flow_sched::calculate_shift;
use sd_schedulers::{check_models, Models, Sampler, SamplerChoice, SamplerOptions, Scheduler};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// SD3's default T5 sequence length (`max_sequence_length`).
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 256;
/// Largest image side accepted, in pixels (SD3.5's positional grid covers 192 patches × 2 × 8 = 3072 px).
pub const MAX_SIDE: i64 = 4096;
/// Largest batch accepted.
pub const MAX_BATCH: i64 = 64;
/// Largest step count accepted.
pub const MAX_STEPS: usize = 1000;

/// The flow-matching sampler a request means on an SD3 model. Clients written for the UNet families name those
/// samplers ("Euler" is AUTOMATIC1111's API default); where a sampler has a flow-matching form (`flow-` + its
/// short name) that form runs, with the schedule asked for, as ComfyUI and Forge do on SD3. "default" and the
/// flow-matching samplers stand as they are; anything else is refused with the list of those there are.
pub fn flow_form(choice: SamplerChoice) -> Result<SamplerChoice> {
    let Sampler::Named(d) = choice.sampler else { return Ok(choice) };
    if d.models == Models::Flow {
        return Ok(choice);
    }
    let form = sd_schedulers::registry::lookup(&format!("flow-{}", d.name)).filter(|f| f.models == Models::Flow);
    if let Some(flow) = form {
        return Ok(SamplerChoice { sampler: Sampler::Named(flow), schedule: choice.schedule });
    }
    // no flow form: the same refusal as any other sampler of the wrong kind, listing the flow samplers
    check_models(d, Models::Flow, "sd3")?;
    Ok(choice)
}

/// The dtype an SD3 model runs in under `opts`: the user's choice, except that `--dtype auto` takes bf16 on GPUs
/// with bf16 tensor cores, the precision SD3 / 3.5 are published and tuned in (its T5 overflows f16 activations).
pub fn dtype_for(opts: &crate::loader::LoadOptions) -> Kind {
    if opts.dtype_auto {
        sd_core::device::auto_dtype_for_bf16_family(opts.device, opts.dtype)
    } else {
        opts.dtype
    }
}

/// Whether a folder holds an SD3 / SD3.5 pipeline (its `model_index.json` class, or an `SD3Transformer2DModel`).
pub fn is_sd3(dir: &ModelDir) -> bool {
    dir.pipeline_class().is_some_and(|c| c.starts_with("StableDiffusion3"))
        || dir.component_class("transformer").as_deref() == Some("SD3Transformer2DModel")
}

impl ClipEncoder {
    fn load(
        root: &Path,
        (tok, enc): (&str, &str),
        lora: Option<(&mut LoraMerger, LoraTarget)>,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_dir(&root.join(tok)).with_context(|| format!("loading {tok}/"))?;
        let model = match lora {
            None => ClipTextModel::load(&root.join(enc), kind, device),
            Some((m, target)) => crate::loader::load_clip_merged(&root.join(enc), target, m, kind, device),
        }
        .with_context(|| format!("loading {enc}/"))?;
        ensure!(
            model.has_projection(),
            "{enc}/ must be a CLIPTextModelWithProjection (SD3 uses its pooled projection)"
        );
        Ok(Self { tokenizer, model })
    }
}

/// The SD3 transformer with LoRAs merged into its weights before it is built.
fn load_transformer_merged(
    dir: &Path,
    merger: &mut LoraMerger,
    kind: Kind,
    device: Device,
) -> Result<SD3Transformer2DModel> {
    let cfg = SD3TransformerConfig::from_file(&dir.join("config.json"))?;
    let vb = merger.component(&sd_core::model_dir::find_weights(dir, None)?, LoraTarget::Transformer, kind, device)?;
    let model = SD3Transformer2DModel::from_varbuilder(&vb, &cfg)?;
    vb.finish("SD3Transformer2DModel", &[])?;
    Ok(model)
}

/// SD3's three text encoders: loaded together, and freed together once the prompts are encoded.
pub struct Sd3TextEncoders {
    pub clip_l: ClipEncoder,
    pub clip_g: ClipEncoder,
    /// `None`: run without T5 (zeros in its place).
    pub t5: Option<(T5Tokenizer, T5EncoderModel)>,
}

/// The loaded pipeline. [`Sd3Pipeline::load`] loads every part; [`Sd3Pipeline::load_staged`] leaves the
/// transformer for [`Sd3Pipeline::load_transformer`], so that a one-shot run can encode its prompts and
/// [`Sd3Pipeline::release_text_encoders`] first: SD3.5 Large's transformer and T5 together (27.6 GB in bf16) do not
/// fit a 24 GB machine, one after the other they do.
pub struct Sd3Pipeline {
    encoders: Option<Sd3TextEncoders>,
    transformer: Option<SD3Transformer2DModel>,
    /// Where the transformer loads from, with the LoRAs still to be merged into it, until it is loaded.
    pending: Option<(PathBuf, Option<LoraMerger>)>,
    /// The transformer's config, read before its weights: sizes are checked against it while it is not loaded.
    pub config: SD3TransformerConfig,
    has_t5: bool,
    pub vae: AutoencoderKL,
    pub scheduler_config: serde_json::Value,
    pub device: Device,
    pub kind: Kind,
    /// LoRAs merged into the weights at load, in the order given.
    pub loras: Vec<MergedLora>,
    /// How the transformer's joint attention runs ([`Self::set_attention_mode`]).
    attention: AttentionMode,
}

/// One SD3 request.
#[derive(Clone, Debug)]
pub struct Sd3Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: i64,
    pub height: i64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub batch_size: i64,
    pub max_sequence_length: usize,
    pub sampler: SamplerChoice,
    /// η for the samplers that take it (flow-euler-a); `None`: the sampler's default.
    pub eta: Option<f64>,
    /// img2img: the picture to start from (resized to `width`×`height` with Lanczos, as diffusers' image
    /// processor does) and how much of it to repaint.
    pub init: Option<Sd3Init>,
    /// Skip-layer guidance (SD3.5 Medium's recommended setting), txt2img with CFG only, as in diffusers.
    pub slg: Option<SkipLayerGuidance>,
    /// Per-encoder prompts, diffusers' `prompt_2` (CLIP-G) and `prompt_3` (T5); `None` = `prompt`.
    pub prompt_2: Option<String>,
    pub prompt_3: Option<String>,
    /// diffusers' `negative_prompt_2` / `negative_prompt_3`; `None` = `negative_prompt`.
    pub negative_prompt_2: Option<String>,
    pub negative_prompt_3: Option<String>,
    /// How A1111's prompt syntax and weights are read ([`crate::sd3_prompt`]): CLIP-L and CLIP-G take the weights,
    /// T5 the text with the syntax stripped.
    pub emphasis: Emphasis,
}

/// diffusers' `skip_guidance_layers` and its scale and window: in the steps `i` with
/// `start·steps < i < stop·steps` the transformer runs once more on the conditional text with these blocks left
/// out, and the guided velocity moves by `scale · (v_cond − v_skipped)`.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipLayerGuidance {
    pub layers: Vec<usize>,
    pub scale: f64,
    pub start: f64,
    pub stop: f64,
}

impl SkipLayerGuidance {
    /// diffusers' defaults for the window and scale (SD3.5 Medium uses layers 7, 8, 9).
    pub fn new(layers: Vec<usize>) -> Self {
        Self { layers, scale: 2.8, start: 0.01, stop: 0.2 }
    }

    fn active(&self, i: usize, steps: usize) -> bool {
        let (i, n) = (i as f64, steps as f64);
        i > n * self.start && i < n * self.stop
    }
}

/// The init image of an SD3 img2img or inpainting request.
#[derive(Clone, Debug)]
pub struct Sd3Init {
    pub image: image::RgbImage,
    /// diffusers' `strength`, (0, 1]: the share of the schedule that runs.
    pub strength: f64,
    /// Inpainting: white = repaint (binarised at half grey after the Lanczos resize), the init image's size.
    pub mask: Option<image::GrayImage>,
}

/// What inpainting re-imposes after each step: the init image's latents, the noise they are noised with, and the
/// latent-size mask (1 = repaint).
struct KeptRegion {
    image_latents: Tensor,
    noise: Tensor,
    mask: Tensor,
}

/// The first schedule position SD3 img2img runs, as diffusers' `StableDiffusion3Img2ImgPipeline.get_timesteps`:
/// unlike the UNet pipelines it does not round `steps × strength` down before subtracting, so 10 steps at 0.55 run
/// 6 steps there (5 in `StableDiffusionImg2ImgPipeline`).
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    ensure!(strength > 0.0 && strength <= 1.0, "strength {strength} is outside (0, 1]");
    let n = steps as f64;
    let start = (n - (n * strength).min(n)).max(0.0) as usize;
    ensure!(
        start < steps,
        "strength {strength} with {steps} steps leaves no denoising step; raise the strength or the step count"
    );
    Ok(start)
}

impl Sd3Request {
    /// diffusers' defaults for a prompt (1024 px, 28 steps, guidance 7.0).
    pub fn new(prompt: &str) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width: 1024,
            height: 1024,
            steps: 28,
            guidance_scale: 7.0,
            seed: 0,
            batch_size: 1,
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
            sampler: SamplerChoice::default(),
            eta: None,
            init: None,
            slg: None,
            prompt_2: None,
            prompt_3: None,
            negative_prompt_2: None,
            negative_prompt_3: None,
            emphasis: Emphasis::Original,
        }
    }
}

/// A request's encoded prompts ([`Sd3Pipeline::encode`]).
pub struct Sd3Prompts {
    pub cond: Sd3Conditioning,
    /// The negative prompt's, present exactly when the request uses classifier-free guidance.
    pub uncond: Option<Sd3Conditioning>,
}

/// What [`Sd3Pipeline::generate_encoded`] made.
pub struct Sd3Generated {
    /// `[B, 3, H, W]` in [0, 1], f32 on the CPU; `None` when interrupted before the first step.
    pub images: Option<Tensor>,
    pub latents: Tensor,
    pub steps_done: usize,
    /// The caller stopped the loop before its last step.
    pub interrupted: bool,
}

/// Prompt embeddings as the transformer takes them.
pub struct Sd3Conditioning {
    /// `[1, 77 · clip_chunks + max_sequence_length, joint_attention_dim]`: the CLIP chunks, then T5's tokens.
    pub prompt_embeds: Tensor,
    /// `[1, pooled_projection_dim]`.
    pub pooled: Tensor,
    /// How many 77-token CLIP chunks lead `prompt_embeds` (1 unless the prompt is over 75 tokens or has `BREAK`).
    pub clip_chunks: i64,
}

impl Sd3Pipeline {
    /// From a diffusers SD3 folder; `no_t5` leaves `text_encoder_3` unloaded.
    pub fn load(root: &Path, kind: Kind, device: Device, no_t5: bool) -> Result<Self> {
        Self::load_with_loras(root, kind, device, no_t5, &[])
    }

    /// [`Self::load`] with LoRA files (path, multiplier) merged into the transformer and the CLIP encoders as
    /// diffusers' `load_lora_weights` + `fuse_lora(lora_scale)` merge them (`W += m · (alpha / rank) · B @ A`), so a
    /// LoRA costs nothing per step. diffusers' SD3 layout (`transformer.` and `text_encoder(_2).` PEFT keys) is read;
    /// a file none of whose layers fits this model is refused. Every part stays loaded (a server's residency): the
    /// weights must fit in memory all at once ([`crate::sd3_memory`]).
    pub fn load_with_loras(
        root: &Path,
        kind: Kind,
        device: Device,
        no_t5: bool,
        loras: &[(PathBuf, f64)],
    ) -> Result<Self> {
        let mut pipe = Self::open(root, kind, device, no_t5, loras, Residency::AllLoaded)?;
        pipe.load_transformer()?;
        Ok(pipe)
    }

    /// Everything but the transformer, for a run that encodes its prompts, calls [`Self::release_text_encoders`]
    /// and then [`Self::load_transformer`]: the weights must fit one stage at a time ([`crate::sd3_memory`]).
    pub fn load_staged(root: &Path, kind: Kind, device: Device, no_t5: bool, loras: &[(PathBuf, f64)]) -> Result<Self> {
        Self::open(root, kind, device, no_t5, loras, Residency::Staged)
    }

    fn open(
        root: &Path,
        kind: Kind,
        device: Device,
        no_t5: bool,
        loras: &[(PathBuf, f64)],
        residency: Residency,
    ) -> Result<Self> {
        let dir = ModelDir::open_folder(root)?;
        ensure!(is_sd3(&dir), "{} is not a Stable Diffusion 3 pipeline folder", root.display());
        // A single-file checkpoint converted without its text encoders leaves these out (`sd convert` says so).
        for (enc, tok, what) in [("text_encoder", "tokenizer", "CLIP-L"), ("text_encoder_2", "tokenizer_2", "CLIP-G")] {
            ensure!(
                root.join(enc).is_dir() && root.join(tok).is_dir(),
                "{} has no {enc}/ or {tok}/: SD3 needs its {what} text encoder; copy both folders from a diffusers \
                 SD3 folder (or convert the single file with --config-dir pointing at one)",
                root.display()
            );
        }
        let transformer_dir = dir.component_dir("transformer")?;
        let config = SD3TransformerConfig::from_file(&transformer_dir.join("config.json"))
            .context("loading transformer/config.json")?;
        let has_t5 = !no_t5 && root.join("text_encoder_3").is_dir();
        let weights = Sd3Weights::of_folder(root, kind)?;
        check_fits(&weights, kind, has_t5, residency, crate::memory::available_on(device))?;
        let mut merger = if loras.is_empty() { None } else { Some(LoraMerger::open(loras)?) };
        let clip_l = ClipEncoder::load(
            root,
            ("tokenizer", "text_encoder"),
            merger.as_mut().map(|m| (m, LoraTarget::TextEncoder)),
            kind,
            device,
        )?;
        let clip_g = ClipEncoder::load(
            root,
            ("tokenizer_2", "text_encoder_2"),
            merger.as_mut().map(|m| (m, LoraTarget::TextEncoder2)),
            kind,
            device,
        )?;
        let t5 = if !has_t5 {
            None
        } else {
            ensure!(
                root.join("tokenizer_3").is_dir(),
                "{} has text_encoder_3/ (T5) but no tokenizer_3/: copy tokenizer_3/ from a diffusers SD3 folder, or \
                 run without T5 (--no-t5)",
                root.display()
            );
            let tok = T5Tokenizer::load(&root.join("tokenizer_3")).context("loading tokenizer_3/")?;
            let model =
                T5EncoderModel::load(&root.join("text_encoder_3"), kind, device).context("loading text_encoder_3/")?;
            Some((tok, model))
        };
        let vae = AutoencoderKL::load(&dir.component_dir("vae")?, kind, device).context("loading vae/")?;
        let (l, g) = (clip_l.model.config().hidden_size, clip_g.model.config().hidden_size);
        ensure!(
            l + g <= config.joint_attention_dim,
            "the CLIP widths {l} + {g} exceed the transformer's joint_attention_dim {}",
            config.joint_attention_dim
        );
        if let Some((_, t5)) = &t5 {
            ensure!(
                t5.config.d_model == config.joint_attention_dim,
                "T5's d_model {} differs from the transformer's joint_attention_dim {}",
                t5.config.d_model,
                config.joint_attention_dim
            );
        }
        ensure!(
            vae.config().latent_channels == config.in_channels,
            "the VAE has {} latent channels, the transformer {}",
            vae.config().latent_channels,
            config.in_channels
        );
        let scheduler_config = dir.component_config("scheduler")?;
        Ok(Self {
            encoders: Some(Sd3TextEncoders { clip_l, clip_g, t5 }),
            transformer: None,
            pending: Some((transformer_dir, merger)),
            config,
            has_t5,
            vae,
            scheduler_config,
            device,
            kind,
            loras: Vec::new(),
            attention: AttentionMode::Auto,
        })
    }

    /// How the transformer evaluates attention, now and when it is loaded later. The default, `Auto`, picks per
    /// shape as for the UNet ([`AttentionMode::resolve`]): on an AVX-512 BF16 CPU without AMX, a 512 px SD3.5
    /// Medium step's joint attention (q/k/v `[2, 24, 1357, 64]`) runs in the crate's fused kernel in 90 ms per call
    /// against LibTorch SDPA's 186 ms (`attention_call` example, medians of 7); f32 and GPUs keep SDPA.
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.attention = mode;
        if let Some(t) = self.transformer.as_mut() {
            t.set_attention_mode(mode);
        }
    }

    /// Loads the transformer (with the LoRAs merged into it) if it is not loaded yet.
    pub fn load_transformer(&mut self) -> Result<()> {
        if self.transformer.is_some() {
            return Ok(());
        }
        let (dir, mut merger) = self.pending.take().context("this pipeline's transformer was released")?;
        let mut transformer = match merger.as_mut() {
            None => SD3Transformer2DModel::load(&dir, self.kind, self.device),
            Some(m) => load_transformer_merged(&dir, m, self.kind, self.device),
        }
        .context("loading transformer/")?;
        transformer.set_attention_mode(self.attention);
        self.config = transformer.config.clone();
        if let Some(m) = merger {
            self.loras = m.finish(&[LoraTarget::TextEncoder, LoraTarget::TextEncoder2, LoraTarget::Transformer])?;
        }
        self.transformer = Some(transformer);
        Ok(())
    }

    /// Frees CLIP-L, CLIP-G and T5 (and hands their memory back to the system): prompts encoded before stay valid,
    /// new ones cannot be encoded.
    pub fn release_text_encoders(&mut self) {
        if self.encoders.take().is_some() {
            sd_core::alloc::release_free_memory();
        }
    }

    /// The text encoders, unless [`Self::release_text_encoders`] freed them.
    pub fn encoders(&self) -> Result<&Sd3TextEncoders> {
        self.encoders.as_ref().context(
            "this SD3 pipeline's text encoders were released after its prompts were encoded; encode prompts before \
             release_text_encoders",
        )
    }

    /// The transformer, once [`Self::load_transformer`] loaded it.
    pub fn transformer(&self) -> Result<&SD3Transformer2DModel> {
        self.transformer.as_ref().context("this SD3 pipeline's transformer is not loaded (load_transformer)")
    }

    /// Whether the prompts' T5 part comes from T5 (false: zeros, as with `--no-t5`).
    pub fn has_t5(&self) -> bool {
        self.has_t5
    }

    /// diffusers' `encode_prompt` for one prompt, with A1111's prompt syntax ("Original" emphasis).
    pub fn encode_prompt(&self, text: &str, max_sequence_length: usize) -> Result<Sd3Conditioning> {
        self.encode_texts(
            &[text.to_string(), text.to_string(), text.to_string()],
            max_sequence_length,
            Emphasis::Original,
        )
    }

    /// `encode_prompt` with a text per encoder, CLIP-L, CLIP-G and T5 (diffusers' `prompt`, `prompt_2`, `prompt_3`),
    /// each read with A1111's prompt syntax under `emphasis` ([`crate::sd3_prompt`]).
    pub fn encode_texts(
        &self,
        texts: &[String; 3],
        max_sequence_length: usize,
        emphasis: Emphasis,
    ) -> Result<Sd3Conditioning> {
        // `<lora:…>` tags chose the LoRAs at load time; the encoders never see them (as in A1111)
        let strip = |t: &str| crate::loras::strip_lora_tags(t).map(|(text, _)| text);
        let (text_l, text_g, text_t5) = (strip(&texts[0])?, strip(&texts[1])?, strip(&texts[2])?);
        tch::no_grad(|| {
            let width = self.config.joint_attention_dim;
            let clip = self.clip_part((&text_l, &text_g), emphasis)?;
            let t5 = match &self.encoders()?.t5 {
                Some((tok, model)) => {
                    let ids: Vec<i64> = crate::sd3_prompt::t5_ids(tok, &text_t5, max_sequence_length, emphasis)?
                        .into_iter()
                        .map(i64::from)
                        .collect();
                    model.forward(&Tensor::from_slice(&ids).unsqueeze(0).to_device(self.device))?
                }
                None => {
                    ensure!(
                        (1..=sd_models::t5::tokenizer::MAX_SEQUENCE_LENGTH).contains(&max_sequence_length),
                        "max_sequence_length {max_sequence_length} is outside 1..={}",
                        sd_models::t5::tokenizer::MAX_SEQUENCE_LENGTH
                    );
                    Tensor::zeros([1, max_sequence_length as i64, width], (self.kind, self.device))
                }
            };
            let clip_chunks = clip.hidden.size()[1] / crate::sd3_prompt::CHUNK_TOKENS;
            let prompt_embeds = Tensor::f_cat(&[clip.hidden.f_to_kind(self.kind)?, t5.f_to_kind(self.kind)?], 1)?;
            Ok(Sd3Conditioning { prompt_embeds, pooled: clip.pooled.f_to_kind(self.kind)?, clip_chunks })
        })
    }

    /// The CLIP-L + CLIP-G part of the conditioning ([`crate::sd3_prompt::encode_clip`]).
    fn clip_part(&self, texts: (&str, &str), emphasis: Emphasis) -> Result<crate::sd3_prompt::ClipPart> {
        let width = self.config.joint_attention_dim;
        let enc = self.encoders()?;
        crate::sd3_prompt::encode_clip(&enc.clip_l, &enc.clip_g, texts, width, emphasis)
    }

    /// Completes the conditioning with fewer CLIP chunks with copies of the empty prompt's CLIP chunk, placed
    /// after its own chunks and before T5's tokens: prompt and negative prompt run through the transformer as one
    /// batch, so their sequences must be equally long (A1111's "pad prompt/negative prompt to be same length").
    fn same_chunks(&self, a: Sd3Conditioning, b: Sd3Conditioning) -> Result<(Sd3Conditioning, Sd3Conditioning)> {
        if a.clip_chunks == b.clip_chunks {
            return Ok((a, b));
        }
        let empty = tch::no_grad(|| self.clip_part(("", ""), Emphasis::None))?.hidden.f_to_kind(self.kind)?;
        let extend = |c: Sd3Conditioning, to: i64| -> Result<Sd3Conditioning> {
            let split = c.clip_chunks * crate::sd3_prompt::CHUNK_TOKENS;
            let rest = c.prompt_embeds.size()[1] - split;
            let parts = c.prompt_embeds.f_split_with_sizes([split, rest], 1)?;
            let extra = empty.f_repeat([1, to - c.clip_chunks, 1])?;
            let prompt_embeds = Tensor::f_cat(&[&parts[0], &extra, &parts[1]], 1)?;
            Ok(Sd3Conditioning { prompt_embeds, pooled: c.pooled, clip_chunks: to })
        };
        let n = a.clip_chunks.max(b.clip_chunks);
        Ok((extend(a, n)?, extend(b, n)?))
    }

    /// Images `[B, 3, H, W]` in [0, 1] (f32, CPU) and the final latents.
    pub fn generate(&self, req: &Sd3Request) -> Result<(Tensor, Tensor)> {
        let prompts = self.encode(req)?;
        let out = self.generate_encoded(req, &prompts, &mut crate::generate::quiet())?;
        let images = out.images.context("the generation stopped before its first step")?;
        Ok((images, out.latents))
    }

    /// The request's prompt and (with classifier-free guidance) negative prompt, encoded once for every batch
    /// that shares them.
    pub fn encode(&self, req: &Sd3Request) -> Result<Sd3Prompts> {
        self.check(req)?;
        let texts = |first: &str, second: &Option<String>, third: &Option<String>| -> [String; 3] {
            [
                first.to_string(),
                second.as_deref().unwrap_or(first).to_string(),
                third.as_deref().unwrap_or(first).to_string(),
            ]
        };
        let (len, emphasis) = (req.max_sequence_length, req.emphasis);
        let cond = self.encode_texts(&texts(&req.prompt, &req.prompt_2, &req.prompt_3), len, emphasis)?;
        if req.guidance_scale <= 1.0 {
            return Ok(Sd3Prompts { cond, uncond: None });
        }
        let neg = texts(&req.negative_prompt, &req.negative_prompt_2, &req.negative_prompt_3);
        let uncond = self.encode_texts(&neg, len, emphasis).context("encoding the negative prompt")?;
        let (cond, uncond) = self.same_chunks(cond, uncond)?;
        Ok(Sd3Prompts { cond, uncond: Some(uncond) })
    }

    /// [`Self::generate`] from prompts [`Self::encode`]d for this request, reporting every step to `on_event`
    /// (progress, previews) and stopping where it answers [`Flow::Interrupt`]: the latents reached so far are then
    /// decoded, as the UNet families' pipeline does.
    pub fn generate_encoded(
        &self,
        req: &Sd3Request,
        prompts: &Sd3Prompts,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Sd3Generated> {
        let (latents, done, interrupted) = self.denoise_encoded(req, prompts, on_event)?;
        let images = if done > 0 {
            let _ = on_event(Event::Phase("decode"));
            Some(tch::no_grad(|| self.decode(&latents))?)
        } else {
            None
        };
        Ok(Sd3Generated { images, latents, steps_done: done, interrupted })
    }

    /// The denoising half of [`Self::generate_encoded`]: (latents, steps run, whether `on_event` stopped the loop).
    /// A one-shot run decodes them with [`Self::decode`] after [`Self::release_transformer`].
    pub fn denoise_encoded(
        &self,
        req: &Sd3Request,
        prompts: &Sd3Prompts,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(Tensor, usize, bool)> {
        self.check(req)?;
        ensure!(
            prompts.uncond.is_some() == (req.guidance_scale > 1.0),
            "the prompts were encoded for a request with{} classifier-free guidance",
            if prompts.uncond.is_some() { "" } else { "out" }
        );
        let _ = on_event(Event::Phase("denoise"));
        tch::no_grad(|| self.denoise(req, &prompts.cond, prompts.uncond.as_ref(), on_event))
    }

    /// Frees the transformer (and hands its memory back to the system) once the last latents are made, so the
    /// VAE decode does not run beside it; it cannot be loaded again.
    pub fn release_transformer(&mut self) {
        self.pending = None;
        if self.transformer.take().is_some() {
            sd_core::alloc::release_free_memory();
        }
    }

    /// Whether the request can run on this model (sizes, counts, a flow-matching sampler), before any work.
    pub fn check(&self, req: &Sd3Request) -> Result<()> {
        let f = self.vae.scale_factor() * self.config.patch_size;
        for (v, what) in [(req.width, "width"), (req.height, "height")] {
            ensure!((f..=MAX_SIDE).contains(&v), "{what} {v} is outside {f}..={MAX_SIDE}");
            ensure!(v % f == 0, "{what} {v} must be a multiple of {f} (VAE factor × patch size)");
        }
        ensure!((1..=MAX_BATCH).contains(&req.batch_size), "batch size {} is outside 1..={MAX_BATCH}", req.batch_size);
        ensure!((1..=MAX_STEPS).contains(&req.steps), "steps {} is outside 1..={MAX_STEPS}", req.steps);
        ensure!(req.guidance_scale.is_finite(), "the guidance scale must be a finite number");
        if let Some(slg) = &req.slg {
            let n = self.config.num_layers.max(0) as usize;
            ensure!(!slg.layers.is_empty(), "skip-layer guidance needs at least one layer");
            if let Some(bad) = slg.layers.iter().find(|&&l| l >= n) {
                bail!(
                    "skip-layer guidance layer {bad} does not exist: this transformer has {n} layers (0 to {})",
                    n.saturating_sub(1)
                );
            }
            ensure!(
                slg.scale.is_finite() && slg.start.is_finite() && slg.stop.is_finite(),
                "the skip-layer guidance scale, start and stop must be finite numbers"
            );
            ensure!(
                req.guidance_scale > 1.0,
                "skip-layer guidance acts through classifier-free guidance: use a guidance scale above 1"
            );
            ensure!(req.init.is_none(), "skip-layer guidance applies to txt2img (diffusers has it there only)");
        }
        if let Some(init) = &req.init {
            img2img_start(req.steps, init.strength)?;
            let (w, h) = init.image.dimensions();
            let max = sd_core::limits::INPUT_MAX_PIXELS;
            ensure!(
                w > 0 && h > 0 && u64::from(w) * u64::from(h) <= max,
                "the init image is {w}x{h}: expected 1 to {max} pixels"
            );
            if let Some(m) = &init.mask {
                ensure!(
                    m.dimensions() == (w, h),
                    "the mask is {}x{} but the init image is {w}x{h}: the mask must have the image's size",
                    m.width(),
                    m.height()
                );
                ensure!(
                    self.config.in_channels == self.vae.config().latent_channels,
                    "inpainting needs a transformer with {} input channels (this one has {}: a dedicated inpainting \
                     transformer, not supported yet)",
                    self.vae.config().latent_channels,
                    self.config.in_channels
                );
            }
        }
        self.sampler(req)?;
        Ok(())
    }

    /// The request's sampler on this model's scheduler config, refused unless it is a flow-matching one, with the
    /// resolution-dependent shift set when the config asks for it: diffusers' `calculate_shift` over the image's
    /// token count (latent height and width over the patch size), passed as `mu`.
    pub fn sampler(&self, req: &Sd3Request) -> Result<Box<dyn Scheduler>> {
        let opts = SamplerOptions { eta: req.eta, ..Default::default() };
        let mut sched =
            req.sampler.build(&self.scheduler_config, &opts).with_context(|| format!("sampler `{}`", req.sampler))?;
        check_models(sched.descriptor(), Models::Flow, "sd3")?;
        if sched.config().use_dynamic_shifting {
            let (f, p) = (self.vae.scale_factor(), self.config.patch_size);
            ensure!(f > 0 && p > 0, "the VAE scale factor and the patch size must be positive");
            let tokens = (req.height / f / p).max(0) * (req.width / f / p).max(0);
            let mu = calculate_shift(tokens as usize, sched.config())?;
            sched.set_mu(mu)?;
        }
        Ok(sched)
    }

    /// (latents, steps run, whether `on_event` stopped the loop early).
    fn denoise(
        &self,
        req: &Sd3Request,
        cond: &Sd3Conditioning,
        uncond: Option<&Sd3Conditioning>,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(Tensor, usize, bool)> {
        let transformer = self.transformer()?;
        let b = req.batch_size;
        let rep = |t: &Tensor| -> Result<Tensor> {
            let mut shape = vec![b];
            shape.extend(std::iter::repeat_n(1, t.dim() - 1));
            Ok(t.f_repeat(&shape)?)
        };
        let (embeds, pooled) = match uncond {
            Some(u) => (
                Tensor::f_cat(&[rep(&u.prompt_embeds)?, rep(&cond.prompt_embeds)?], 0)?,
                Tensor::f_cat(&[rep(&u.pooled)?, rep(&cond.pooled)?], 0)?,
            ),
            None => (rep(&cond.prompt_embeds)?, rep(&cond.pooled)?),
        };
        let mut sched = self.sampler(req)?;
        sched.set_timesteps(req.steps, self.device)?;
        let f = self.vae.scale_factor();
        let c = self.config.in_channels;
        let shape = [b, c, req.height / f, req.width / f];
        let mut gen = TorchGenerator::new(req.seed);
        let (mut latents, start, kept) = match &req.init {
            None => (gen.randn(&shape, self.kind, Device::Cpu).to_device(self.device), 0, None),
            Some(init) => {
                let start = img2img_start(req.steps, init.strength)? * sched.order();
                ensure!(start < sched.timesteps().len(), "img2img start {start} is past the end of the schedule");
                sched.set_begin_index(start);
                let vae_kind = self.vae.kind();
                let (image, mask) = match &init.mask {
                    None => (
                        crate::init_image::prepare_init(&init.image, req.width, req.height, vae_kind, self.device),
                        None,
                    ),
                    Some(m) => {
                        let p = crate::init_image::prepare_mask(
                            &init.image,
                            m,
                            req.width,
                            req.height,
                            vae_kind,
                            self.device,
                        );
                        (p.image, Some(p.mask))
                    }
                };
                let cfg = self.vae.config();
                let z = self.vae.encode(&image)?.sample(&mut gen);
                let z = ((z - cfg.shift_factor.unwrap_or(0.0)) * cfg.scaling_factor).f_to_kind(self.kind)?;
                let z = z.f_repeat([b, 1, 1, 1])?;
                let noise = gen.randn(&shape, self.kind, Device::Cpu).to_device(self.device);
                // at full strength inpainting starts from the noise itself, as diffusers does
                let latents = if mask.is_some() && init.strength == 1.0 {
                    noise.shallow_clone()
                } else {
                    sched.add_noise(&z, &noise, sched.timesteps()[start])?
                };
                // diffusers also encodes the masked image here (a third draw); a 16-channel transformer never reads
                // it and no sampler diffusers has for SD3 draws after it, so it is left out (flow-euler-a, which
                // diffusers lacks, draws its step noise from here on)
                let kept = match mask {
                    Some(m) => Some(KeptRegion {
                        image_latents: z,
                        noise,
                        mask: m
                            .f_upsample_nearest2d([shape[2], shape[3]], None::<f64>, None::<f64>)?
                            .f_to_kind(self.kind)?
                            .f_repeat([b, 1, 1, 1])?,
                    }),
                    None => None,
                };
                (latents, start, kept)
            }
        };
        let timesteps: Vec<f64> = sched.timesteps().iter().skip(start).copied().collect();
        for (i, &t) in timesteps.iter().enumerate() {
            let x = if uncond.is_some() { Tensor::f_cat(&[&latents, &latents], 0)? } else { latents.shallow_clone() };
            let n = x.size()[0] as usize;
            let ts = Tensor::from_slice(&vec![t as f32; n]).to_device(self.device);
            let v = transformer.forward(&x, &ts, &embeds, &pooled, &[])?;
            let v = match uncond {
                Some(_) => {
                    let parts = v.f_chunk(2, 0)?;
                    let guided = (&parts[0] + (&parts[1] - &parts[0]) * req.guidance_scale).f_to_kind(v.kind())?;
                    match &req.slg {
                        Some(slg) if slg.active(i, req.steps) => {
                            let ts = Tensor::from_slice(&vec![t as f32; b as usize]).to_device(self.device);
                            let skipped = transformer.forward(
                                &latents,
                                &ts,
                                &rep(&cond.prompt_embeds)?,
                                &rep(&cond.pooled)?,
                                &slg.layers,
                            )?;
                            (guided + (&parts[1] - skipped) * slg.scale).f_to_kind(v.kind())?
                        }
                        _ => guided,
                    }
                }
                None => v,
            };
            latents = sched.step(&v, t, &latents, &mut gen)?;
            if let Some(k) = &kept {
                // the kept region at the next step's noise level (clean after the last step)
                let proper = match timesteps.get(i + 1) {
                    Some(&next) => sched.add_noise(&k.image_latents, &k.noise, next)?,
                    None => k.image_latents.shallow_clone(),
                };
                let keep = k.mask.f_neg()?.f_add_scalar(1.0)?;
                latents = keep.f_mul(&proper)?.f_add(&k.mask.f_mul(&latents)?)?;
            }
            let info = StepInfo { index: i + 1, total: timesteps.len(), timestep: t, latents: &latents };
            if on_event(Event::Step(info)) == Flow::Interrupt && i + 1 < timesteps.len() {
                return Ok((latents, i + 1, true));
            }
        }
        Ok((latents, timesteps.len(), false))
    }

    /// Latents → images in [0, 1], `[B, 3, H, W]` f32 on the CPU.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let cfg = self.vae.config();
        let z = latents.f_to_kind(Kind::Float)? / cfg.scaling_factor + cfg.shift_factor.unwrap_or(0.0);
        let x = self.vae.decode(&z.f_to_kind(self.vae.kind())?)?;
        Ok((x.f_to_kind(Kind::Float)? / 2.0 + 0.5).f_clamp(0.0, 1.0)?.to_device(Device::Cpu))
    }
}

impl Sd3Pipeline {
    /// Write each image of `images` `[B, 3, H, W]` as `sd generate` writes the UNet families' ([`Self::render`]);
    /// `counter` numbers images across batches for `{n}`.
    pub fn save_images(
        &self,
        model_name: &str,
        req: &Sd3Request,
        images: &Tensor,
        opts: &crate::output::OutputOptions,
        counter: &mut usize,
    ) -> Result<Vec<crate::output::SavedImage>> {
        crate::output::write_rendered(self.render(model_name, req, images, &opts.render)?, model_name, opts, counter)
    }

    /// Each image of `images` `[B, 3, H, W]` as a finished file in memory, as the UNet families' are made
    /// ([`crate::output::finish_image`]: visible label and invisible watermark unless turned off, A1111
    /// `parameters` and the provenance labels, C2PA Content Credentials when an identity is given); SD3 ships no
    /// safety checker, so none runs. diffusers' SD3 pipelines carry no watermarker; sd-rs marks every image, with
    /// the non-XL payload.
    pub fn render(
        &self,
        model_name: &str,
        req: &Sd3Request,
        images: &Tensor,
        r: &crate::output::RenderOptions,
    ) -> Result<Vec<crate::output::RenderedImage>> {
        use sd_provenance::watermark::Payload;
        let label = self.sampler(req)?.descriptor().label();
        // hashed once per call, not per image: a LoRA file can be hundreds of megabytes
        let lora_hashes = crate::output::lora_hashes(&self.loras);
        let model = crate::output::ModelRef { name: model_name, hash: None };
        let mut out = Vec::new();
        for i in 0..images.size()[0] {
            let (bytes, infotext, outcome) =
                crate::output::finish_image(&images.f_get(i)?, &Payload::SdV1, model, r, |outcome| {
                    self.generation_info(model_name, req, label, i as usize, outcome, lora_hashes.clone())
                })?;
            out.push(crate::output::RenderedImage {
                bytes: Some(bytes),
                format: r.format,
                seed: req.seed,
                index_in_batch: i as usize,
                infotext,
                watermark: sd_provenance::metadata::watermark_record(Some(&outcome)),
                safety_checked: false,
                flagged: false,
            });
        }
        Ok(out)
    }

    /// The A1111 parameters of image `i` of a batch.
    fn generation_info(
        &self,
        model_name: &str,
        req: &Sd3Request,
        sampler_label: &str,
        i: usize,
        outcome: &sd_provenance::watermark::WatermarkOutcome,
        lora_hashes: Option<(String, String)>,
    ) -> sd_provenance::metadata::GenerationInfo {
        use sd_provenance::metadata::GenerationInfo;
        let mut info = GenerationInfo {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            tool_name: "sd-rs".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        info.steps = req.steps as u32;
        info.sampler = sampler_label.to_string();
        info.cfg_scale = req.guidance_scale;
        info.seed = req.seed;
        info.width = req.width as u32;
        info.height = req.height as u32;
        info.model_name = Some(model_name.to_string());
        if let Some(slg) = &req.slg {
            let layers: Vec<String> = slg.layers.iter().map(usize::to_string).collect();
            info.extra.push(("SLG layers".into(), layers.join(",")));
            info.extra.push(("SLG scale".into(), slg.scale.to_string()));
            info.extra.push(("SLG start".into(), slg.start.to_string()));
            info.extra.push(("SLG stop".into(), slg.stop.to_string()));
        }
        if let Some(init) = &req.init {
            info.extra.push(("Denoising strength".into(), init.strength.to_string()));
        }
        let per_encoder = [
            ("CLIP-G prompt", &req.prompt_2),
            ("T5 prompt", &req.prompt_3),
            ("CLIP-G negative prompt", &req.negative_prompt_2),
            ("T5 negative prompt", &req.negative_prompt_3),
        ];
        for (key, text) in per_encoder {
            if let Some(t) = text {
                info.extra.push((key.into(), t.clone()));
            }
        }
        // A1111 names the emphasis mode only when it is not the default and a prompt has brackets
        let bracketed = [&req.prompt, &req.negative_prompt].iter().any(|t| t.contains(['(', '[']));
        if req.emphasis != Emphasis::Original && bracketed {
            let name = crate::output::a1111_emphasis_name(req.emphasis);
            info.extra.push(("Emphasis".into(), name.into()));
        }
        info.watermark = Some(outcome.clone());
        if !self.has_t5 {
            info.extra.push(("T5".into(), "off".into()));
        } else if req.max_sequence_length != DEFAULT_MAX_SEQUENCE_LENGTH {
            info.extra.push(("T5 max length".into(), req.max_sequence_length.to_string()));
        }
        if req.batch_size > 1 {
            info.extra.push(("Batch size".into(), req.batch_size.to_string()));
            info.extra.push(("Batch pos".into(), i.to_string()));
        }
        info.extra.extend(lora_hashes);
        info
    }

    /// The native resolution: the transformer's `sample_size` latents times the VAE factor (1024 for SD3).
    /// Image sides must be multiples of this (VAE factor × patch size).
    pub fn size_multiple(&self) -> i64 {
        self.vae.scale_factor() * self.config.patch_size
    }

    pub fn default_size(&self) -> i64 {
        self.config.sample_size * self.vae.scale_factor()
    }
}
