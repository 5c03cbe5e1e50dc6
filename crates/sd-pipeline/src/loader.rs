//! [`StableDiffusion`]: every component of a diffusers model folder, loaded onto its device and dtype.
//!
//! Text encoders and UNet use the compute dtype; the VAE may get its own (`--vae-dtype`), because SD1/SDXL
//! VAEs overflow in f16 (diffusers' `force_upcast`). Components are loaded from memory-mapped safetensors,
//! converted tensor by tensor, so the model exists once in memory. With LoRAs, the UNet and text encoders are
//! read into memory in f32 instead, merged (`W += m · scale · up @ down`, see [`crate::loras`]) and then built.

use crate::family::{Family, ModelInfo};
use crate::loras::{LoraMerger, MergedLora};
use crate::prompt::lora::LoraTarget;
use crate::prompt::{EncoderStyle, TextEncoders};
use anyhow::{Context, Result};
use sd_core::model_dir::{find_weights, ModelDir};
use sd_models::attention::AttentionMode;
use sd_models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_models::safety::SafetyChecker;
use sd_models::unet::{UNet2DConditionModel, UNetConfig};
use sd_models::vae::{AutoencoderKL, AutoencoderTiny, TilingConfig};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Kind,
    /// `dtype` came from `--dtype auto`: a family with its own rule may replace it (SD3 takes bf16 on GPUs with bf16
    /// tensor cores, `sd_core::device::auto_dtype_for_bf16_family`).
    pub dtype_auto: bool,
    /// VAE dtype; `None` = the compute dtype, except f16 with `force_upcast`, which decodes in f32.
    pub vae_dtype: Option<Kind>,
    /// Decode with TAESD from this folder instead of the full VAE.
    pub taesd: Option<PathBuf>,
    /// Override the detected family.
    pub family: Option<Family>,
    /// Override the scheduler's prediction type (`epsilon`, `v_prediction`, `sample`).
    pub prediction_type: Option<String>,
    /// Load `safety_checker/` when the folder has one.
    pub load_safety_checker: bool,
    /// How the UNet evaluates attention (`Auto`: per shape, see `AttentionMode::resolve`).
    pub attention: AttentionMode,
    /// Trade speed for memory: VAE decode/encode in tiles (attention on the CPU is already the fused kernel,
    /// which never holds the whole score matrix).
    pub low_memory: bool,
    /// UNet and VAE convolutions in channels-last layout; `None` = `sd_models::nn::channels_last_by_default`.
    pub channels_last: Option<bool>,
    /// LoRA files and multipliers merged into the UNet and text encoders at load (empty: weights are
    /// memory-mapped as stored).
    pub loras: Vec<(PathBuf, f64)>,
    /// Component configs for single-file checkpoints of unusual architectures (`--config-dir`).
    pub config_dir: Option<PathBuf>,
    /// Keep components in CPU RAM and bring each to `device` only while it runs (`--offload`, see
    /// [`crate::offload`]).
    pub offload: crate::offload::Offload,
    /// Where offloaded weights wait: CPU RAM, or nowhere in tests (see [`crate::offload::Parking`]).
    pub offload_parking: crate::offload::Parking,
    /// Diffusers `ControlNetModel` folders loaded beside the UNet (request units name them by folder name); more
    /// can be added later with [`StableDiffusion::load_controlnet`].
    pub controlnets: Vec<PathBuf>,
}

impl LoadOptions {
    pub fn cpu(dtype: Kind) -> Self {
        Self {
            device: Device::Cpu,
            dtype,
            dtype_auto: false,
            vae_dtype: None,
            taesd: None,
            family: None,
            prediction_type: None,
            load_safety_checker: true,
            attention: AttentionMode::Auto,
            low_memory: false,
            channels_last: None,
            loras: Vec::new(),
            config_dir: None,
            offload: crate::offload::Offload::None,
            offload_parking: crate::offload::Parking::Ram,
            controlnets: Vec::new(),
        }
    }
}

/// A loaded pipeline.
pub struct StableDiffusion {
    pub dir: ModelDir,
    pub info: ModelInfo,
    pub text: TextEncoders,
    /// `None` once [`Self::release_denoiser`] freed it; reached through [`Self::unet`].
    unet: Option<UNet2DConditionModel>,
    pub vae: AutoencoderKL,
    pub taesd: Option<AutoencoderTiny>,
    /// ControlNets loaded beside the UNet, by name (see [`crate::control`]).
    pub controlnets: Vec<crate::control::LoadedControlNet>,
    /// IP-Adapters loaded beside the UNet, by name (see [`crate::ip_adapter`]).
    pub ip_adapters: Vec<crate::ip_adapter::LoadedIpAdapter>,
    /// Their image encoders, one per folder.
    pub image_encoders: Vec<crate::ip_adapter::LoadedImageEncoder>,
    pub safety: Option<SafetyChecker>,
    /// The model's saved `scheduler_config.json` (samplers are built from it, as diffusers' `from_config`).
    pub scheduler_config: serde_json::Value,
    pub force_zeros_for_empty_prompt: bool,
    pub opts: LoadOptions,
    /// Where each component is when offloading (`--offload`); moves nothing otherwise.
    pub offload: crate::offload::Offloader,
    /// Display name for metadata (folder or checkpoint name).
    pub name: String,
    /// LoRAs merged into the weights, in `opts.loras` order.
    pub loras: Vec<MergedLora>,
    /// The checkpoint file when the model came from one (its hash is A1111's "Model hash").
    pub source_file: Option<PathBuf>,
}

/// What a request on a model whose UNet [`StableDiffusion::release_denoiser`] freed is told.
fn released(name: &str) -> String {
    format!("the UNet of {name} was released after its last run; load the model again to generate")
}

impl StableDiffusion {
    /// The UNet, unless [`Self::release_denoiser`] freed it.
    pub fn unet(&self) -> Result<&UNet2DConditionModel> {
        self.unet.as_ref().with_context(|| released(&self.name))
    }

    /// [`Self::unet`], to change (bind adapters to its attention sites).
    pub fn unet_mut(&mut self) -> Result<&mut UNet2DConditionModel> {
        let name = &self.name;
        self.unet.as_mut().with_context(|| released(name))
    }

    /// Free the UNet and what runs beside it at every step (ControlNets, IP-Adapters and their image encoders):
    /// a one-shot run needs none of them once its last latents are made, and freeing them before the VAE decode
    /// keeps the decode's activations from stacking on top of the UNet's weights (the run's peak memory). Later
    /// requests fail with a message saying so.
    pub fn release_denoiser(&mut self) {
        self.unet = None;
        self.controlnets.clear();
        self.ip_adapters.clear();
        self.image_encoders.clear();
        self.offload.release(crate::offload::Group::Denoiser);
        sd_core::alloc::release_free_memory();
    }

    /// Load a diffusers folder or an HF-cache repo id.
    pub fn load(spec: &str, opts: LoadOptions) -> Result<Self> {
        // Denoising reuses the same activation sizes every step; see sd_core::alloc.
        sd_core::alloc::reuse_freed_memory();
        let source_file = crate::single_file::is_single_file(spec).then(|| PathBuf::from(spec));
        let dir = match &source_file {
            Some(file) => {
                ModelDir::open_folder(&crate::single_file::converted_folder(file, opts.config_dir.as_deref())?)?
            }
            None => ModelDir::open(spec)?,
        };
        if crate::sd3::is_sd3(&dir) {
            anyhow::bail!(
                "{spec} is a Stable Diffusion 3 pipeline (SD3Transformer2DModel, no UNet): it runs through \
                 sd_pipeline::sd3 (`sd generate` and `sd serve` do), not the UNet pipeline"
            );
        }
        let mut info = ModelInfo::detect(&dir)?;
        if let Some(f) = opts.family {
            info.family = f;
        }
        if let Some(p) = &opts.prediction_type {
            info.prediction_type = p.clone();
        }
        let root = dir.root.clone();
        let offload = crate::offload::Offloader::new(opts.offload, opts.device, opts.offload_parking);
        // With offload every component is built in CPU RAM; `opts.device` stays where the computation runs.
        let (device, dtype) = (offload.load_device(), opts.dtype);
        use crate::offload::Group;
        use sd_core::weights::capture;
        let mut merger = if opts.loras.is_empty() { None } else { Some(LoraMerger::open(&opts.loras)?) };
        let mut present = vec![LoraTarget::Unet];
        let mut pairs = Vec::new();
        let (text, text_weights) = capture(|| {
            if !info.refiner {
                present.push(LoraTarget::TextEncoder);
                pairs.push(load_text_pair(
                    &root,
                    "tokenizer",
                    "text_encoder",
                    LoraTarget::TextEncoder,
                    merger.as_mut(),
                    dtype,
                    device,
                )?);
            }
            // The refiner's only encoder is the base's second one (OpenCLIP G).
            if info.family == Family::Sdxl {
                present.push(LoraTarget::TextEncoder2);
                pairs.push(load_text_pair(
                    &root,
                    "tokenizer_2",
                    "text_encoder_2",
                    LoraTarget::TextEncoder2,
                    merger.as_mut(),
                    dtype,
                    device,
                )?);
            }
            TextEncoders::new(pairs)
        })?;
        offload.adopt(Group::TextEncoders, text_weights)?;
        let unet_dir = dir.component_dir("unet")?;
        let nhwc = opts.channels_last.unwrap_or(sd_models::nn::channels_last_by_default(opts.device, dtype));
        let (mut unet, unet_weights) = capture(|| match merger.as_mut() {
            None => UNet2DConditionModel::load_with(&unet_dir, dtype, device, nhwc),
            Some(m) => load_unet_merged(&unet_dir, m, dtype, device, nhwc),
        })
        .with_context(|| format!("loading the UNet of {}", root.display()))?;
        offload.adopt(Group::Denoiser, unet_weights)?;
        unet.set_attention_mode(opts.attention);
        let loras = match merger {
            Some(m) => m.finish(&present)?,
            None => Vec::new(),
        };
        let vae_dir = dir.component_dir("vae")?;
        // diffusers' `force_upcast` (default true): f16 VAEs of SD1/SDXL overflow, so they decode in f32. bf16 has
        // f32's range and needs no upcast. Decided from the config so the VAE is loaded once.
        let force_upcast = dir.component_config("vae")?.get("force_upcast").and_then(|v| v.as_bool()).unwrap_or(true);
        let upcast = dtype == Kind::Half && force_upcast;
        let vae_kind = opts.vae_dtype.unwrap_or(if upcast { Kind::Float } else { dtype });
        let (mut vae, vae_weights) = capture(|| AutoencoderKL::load_with(&vae_dir, vae_kind, device, nhwc))
            .with_context(|| format!("loading the VAE of {}", root.display()))?;
        vae.set_device(opts.device);
        offload.adopt(Group::Vae, vae_weights)?;
        if opts.low_memory {
            let tiling = TilingConfig::for_config(vae.config());
            vae.set_tiling(Some(tiling));
        }
        let taesd = match &opts.taesd {
            Some(p) => {
                // TAESD always maps 8x8 pixels to one latent; another VAE scale would decode to the wrong size.
                if vae.scale_factor() != 8 {
                    anyhow::bail!(
                        "--taesd decodes latents at 1/8 scale, but this model's VAE works at 1/{}: use its own VAE",
                        vae.scale_factor()
                    );
                }
                let xl = info.family == Family::Sdxl;
                let (mut tiny, weights) = capture(|| AutoencoderTiny::load_taesd_dir(p, xl, vae_kind, device))?;
                tiny.set_device(opts.device);
                offload.adopt(Group::Vae, weights)?;
                Some(tiny)
            }
            None => None,
        };
        let safety = if opts.load_safety_checker {
            let (safety, weights) = capture(|| SafetyChecker::load(&root, dtype, device))?;
            offload.adopt(Group::SafetyChecker, weights)?;
            safety
        } else {
            None
        };
        let mut scheduler_config = dir.component_config("scheduler")?;
        if let (Some(p), Some(obj)) = (&opts.prediction_type, scheduler_config.as_object_mut()) {
            obj.insert("prediction_type".into(), serde_json::Value::String(p.clone()));
        }
        let force_zeros_for_empty_prompt = dir
            .index
            .get("force_zeros_for_empty_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(info.family == Family::Sdxl);
        let named = source_file.as_ref().and_then(|f| f.file_stem()).or(root.file_name());
        let name = named.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.to_string());
        let controlnet_paths = opts.controlnets.clone();
        let mut sd = Self {
            dir,
            info,
            text,
            unet: Some(unet),
            vae,
            taesd,
            controlnets: Vec::new(),
            ip_adapters: Vec::new(),
            image_encoders: Vec::new(),
            safety,
            scheduler_config,
            force_zeros_for_empty_prompt,
            opts,
            offload,
            name,
            source_file,
            loras,
        };
        for p in &controlnet_paths {
            sd.load_controlnet(p)?;
        }
        Ok(sd)
    }

    /// The prompt-encoding style this model needs.
    pub fn encoder_style(&self) -> EncoderStyle {
        match self.info.family {
            Family::Sd1 => EncoderStyle::Sd1,
            Family::Sd2 => EncoderStyle::Sd2,
            Family::Sdxl => EncoderStyle::Sdxl { force_zeros_for_empty_prompt: self.force_zeros_for_empty_prompt },
        }
    }

    /// Spatial factor between pixels and latents.
    pub fn vae_scale_factor(&self) -> i64 {
        self.vae.scale_factor()
    }
}

fn load_unet_merged(
    dir: &Path,
    merger: &mut LoraMerger,
    kind: Kind,
    device: Device,
    nhwc: bool,
) -> Result<UNet2DConditionModel> {
    let cfg = UNetConfig::from_file(&dir.join("config.json"))?;
    let vb = merger
        .component(&find_weights(dir, None)?, LoraTarget::Unet, kind, device)?
        .with_channels_last(nhwc)?
        .with_winograd(true)?;
    let model = UNet2DConditionModel::from_varbuilder(&vb, &cfg)?;
    vb.finish("UNet2DConditionModel", &[])?;
    Ok(model)
}

pub(crate) fn load_clip_merged(
    dir: &Path,
    target: LoraTarget,
    merger: &mut LoraMerger,
    kind: Kind,
    device: Device,
) -> Result<ClipTextModel> {
    let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
    let vb = merger.component(&find_weights(dir, None)?, target, kind, device)?;
    let with_projection = cfg.declares_projection() || vb.contains("text_projection.weight");
    let model = ClipTextModel::from_varbuilder(&vb, &cfg, with_projection)?;
    vb.finish("CLIP text encoder", &[])?;
    Ok(model)
}

fn load_text_pair(
    root: &Path,
    tok: &str,
    enc: &str,
    target: LoraTarget,
    merger: Option<&mut LoraMerger>,
    kind: Kind,
    device: Device,
) -> Result<(ClipTokenizer, ClipTextModel)> {
    let tok_dir = root.join(tok);
    let tokenizer = if tok_dir.is_dir() {
        ClipTokenizer::from_dir(&tok_dir)?
    } else {
        anyhow::bail!("{} is missing the `{tok}/` folder", root.display())
    };
    let enc_dir = root.join(enc);
    if !enc_dir.is_dir() {
        anyhow::bail!("{} is missing the `{enc}/` folder", root.display());
    }
    let model = match merger {
        None => ClipTextModel::load(&enc_dir, kind, device),
        Some(m) => load_clip_merged(&enc_dir, target, m, kind, device),
    }
    .with_context(|| format!("loading {enc} of {}", root.display()))?;
    Ok((tokenizer, model))
}
