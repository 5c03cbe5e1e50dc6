//! IP-Adapter in the pipeline, as diffusers' `IPAdapterMixin.load_ip_adapter` and the SD / SDXL pipelines'
//! `prepare_ip_adapter_image_embeds` run it: an adapter file is loaded beside the UNet together with its image
//! encoder (a `CLIPVisionModelWithProjection` folder, by default the `image_encoder/` next to the adapter file, as
//! h94/IP-Adapter ships them); a request's picture is encoded once, projected to tokens, and every UNet call
//! attends to them through [`sd_models::ip_adapter::IpAdapterHook`].
//!
//! Classifier-free guidance: base adapters give the unconditional half zero `image_embeds`; adapters that read the
//! penultimate hidden state (plus, full-face) give it the encoder's output for an all-zero picture. Both are
//! diffusers' `encode_image`.

use crate::loader::StableDiffusion;
use crate::request::GenerationRequest;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use sd_core::image_io::{self, Range};
use sd_core::limits;
use sd_models::clip::image_processor::{ClipImageProcessor, ResizeTo};
use sd_models::clip::vision_projection::read_vision_config;
use sd_models::clip::ClipVisionModelWithProjection;
use sd_models::ip_adapter::{IpAdapter, IpAdapterUnit};
use sd_models::unet::PerBlock;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One IP-Adapter of a request (diffusers' `ip_adapter_image` and `set_ip_adapter_scale`, per adapter).
#[derive(Clone, Debug)]
pub struct IpAdapterInput {
    /// The name of an adapter loaded into the pipeline ([`StableDiffusion::load_ip_adapter`]).
    pub model: String,
    /// The image prompt.
    pub image: RgbImage,
    /// How strongly the picture steers: 0 = not at all, 1 = as trained.
    pub scale: f64,
}

impl IpAdapterInput {
    pub fn new(model: &str, image: RgbImage, scale: f64) -> Self {
        Self { model: model.to_string(), image, scale }
    }
}

/// Check a request's adapters before any model work.
pub fn validate(inputs: &[IpAdapterInput]) -> Result<()> {
    if inputs.len() as u64 > limits::IP_ADAPTER_MAX_ADAPTERS {
        bail!(limits::exceeded(
            format!("{} IP-Adapters", inputs.len()),
            "IP-Adapters",
            limits::IP_ADAPTER_MAX_ADAPTERS,
            "adapters"
        ));
    }
    for (i, a) in inputs.iter().enumerate() {
        if !a.scale.is_finite() || !(0.0..=10.0).contains(&a.scale) {
            bail!("IP-Adapter {i}: the scale must be within [0, 10] (got {})", a.scale);
        }
        if a.image.width() == 0 || a.image.height() == 0 {
            bail!("IP-Adapter {i}: the image prompt is empty ({}x{})", a.image.width(), a.image.height());
        }
    }
    Ok(())
}

/// An image encoder loaded once per folder, shared by the adapters that use it.
pub struct LoadedImageEncoder {
    pub path: PathBuf,
    pub model: ClipVisionModelWithProjection,
    pub processor: ClipImageProcessor,
}

/// An adapter loaded beside the UNet, under the name requests use for it (its file stem).
pub struct LoadedIpAdapter {
    pub name: String,
    pub path: PathBuf,
    pub adapter: IpAdapter,
    /// Index into [`StableDiffusion::image_encoders`].
    pub encoder: usize,
}

/// Where to look for the encoder when none is given: beside the adapter file (h94's `models/image_encoder`),
/// then in the model folder (a diffusers pipeline saved with its `image_encoder`).
fn default_encoder_dirs(adapter: &Path, model_root: &Path) -> Vec<PathBuf> {
    let beside = adapter.parent().map(|p| p.join("image_encoder"));
    beside.into_iter().chain([model_root.join("image_encoder")]).collect()
}

/// Whether `path` holds an IP-Adapter in the original layout, judged by its tensor names (`image_proj.*` and
/// `ip_adapter.<n>.*`, what [`sd_models::ip_adapter::convert`] reads), never by its file name: a server's
/// ControlNet folder holds both kinds side by side, as A1111's `models/ControlNet` does. Only the names are read
/// (a safetensors header, a checkpoint's pickle), no weights.
pub fn is_ip_adapter_file(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    let Ok(src) = sd_models::convert::source::open(path) else { return false };
    let names = src.names();
    names.iter().any(|n| n.starts_with("image_proj.")) && names.iter().any(|n| n.starts_with("ip_adapter."))
}

impl StableDiffusion {
    /// Load an original IP-Adapter file (once per path) and its image encoder (`encoder`, or the default places),
    /// check both fit this model, and return the name requests use for the adapter.
    pub fn load_ip_adapter(&mut self, path: &Path, encoder: Option<&Path>) -> Result<String> {
        let candidates = match encoder {
            Some(dir) => vec![dir.to_path_buf()],
            None => self.default_ip_encoder_dirs(path),
        };
        self.load_ip_adapter_among(path, &candidates)
    }

    /// Where an adapter's encoder is looked for when none is named: `image_encoder/` beside the adapter file,
    /// then in the model folder.
    pub fn default_ip_encoder_dirs(&self, adapter: &Path) -> Vec<PathBuf> {
        default_encoder_dirs(adapter, &self.dir.root)
    }

    /// Load an IP-Adapter with the first of `encoders` (image encoder folders, in order of preference) whose
    /// output the adapter takes: a server that offers SD1.5 and SDXL adapters holds a ViT-H and a ViT-bigG
    /// encoder, and the adapter's input width tells which (A1111's ControlNet extension picks by the unit's
    /// preprocessor instead; a preprocessor naming the other encoder would only fail there). Only the candidates'
    /// `config.json` are read until one is chosen.
    pub fn load_ip_adapter_among(&mut self, path: &Path, encoders: &[PathBuf]) -> Result<String> {
        if let Some(a) = self.ip_adapters.iter().find(|a| a.path == path) {
            return Ok(a.name.clone());
        }
        if !path.is_file() {
            bail!(
                "{}: no such file; expected an IP-Adapter weight file (ip-adapter_sd15.safetensors, \
                 ip-adapter-plus_sdxl_vit-h.safetensors, …)",
                path.display()
            );
        }
        let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = self.ip_adapters.iter().find(|a| a.name == name) {
            bail!(
                "two IP-Adapters are named {name:?} ({} and {}); requests refer to adapters by file stem",
                other.path.display(),
                path.display()
            );
        }
        let (kind, device) = (self.opts.dtype, self.opts.device);
        let mut adapter = IpAdapter::load(path, kind, device)
            .with_context(|| format!("loading the IP-Adapter {}", path.display()))?;
        let unet = self.unet_mut()?;
        let cross = match &unet.config().cross_attention_dim {
            PerBlock::One(d) => *d,
            PerBlock::Many(v) => v.first().copied().unwrap_or(0),
        };
        let sites = unet.attention_sites();
        adapter
            .bind(&sites, cross)
            .with_context(|| format!("the IP-Adapter {} does not fit {}", path.display(), self.name))?;
        let encoder_dir = choose_encoder(path, &adapter, encoders)?;
        let encoder = self.image_encoder(&encoder_dir)?;
        self.ip_adapters.push(LoadedIpAdapter { name: name.clone(), path: path.to_path_buf(), adapter, encoder });
        Ok(name)
    }

    /// The encoder of `dir`, loaded once. Its pictures are prepared by the model's `feature_extractor` when that
    /// crops to the encoder's size, else by a `CLIPImageProcessor` at the encoder's size (what diffusers'
    /// `load_ip_adapter` registers when a pipeline has no feature extractor).
    fn image_encoder(&mut self, dir: &Path) -> Result<usize> {
        if let Some(i) = self.image_encoders.iter().position(|e| e.path == dir) {
            return Ok(i);
        }
        let model = ClipVisionModelWithProjection::load(dir, self.opts.dtype, self.opts.device)
            .with_context(|| format!("loading the image encoder {}", dir.display()))?;
        let s = model.config().image_size;
        let fe = self.dir.root.join("feature_extractor").join("preprocessor_config.json");
        let own = if fe.is_file() { Some(ClipImageProcessor::from_file(&fe)?) } else { None };
        let processor = match own {
            Some(p) if p.crop == (s, s) => p,
            _ => ClipImageProcessor { size: ResizeTo::ShortestEdge(s), crop: (s, s), ..Default::default() },
        };
        self.image_encoders.push(LoadedImageEncoder { path: dir.to_path_buf(), model, processor });
        Ok(self.image_encoders.len() - 1)
    }

    fn ip_adapter_named(&self, name: &str) -> Result<&LoadedIpAdapter> {
        self.ip_adapters.iter().find(|a| a.name == name).with_context(|| {
            let loaded: Vec<&str> = self.ip_adapters.iter().map(|a| a.name.as_str()).collect();
            format!("the request uses the IP-Adapter {name:?}, which is not loaded (loaded: {loaded:?})")
        })
    }
}

/// The first of `candidates` that is an encoder folder making the output `adapter` takes (its `image_embeds`, or
/// its hidden states for plus / full-face adapters); the error names every folder tried and what it makes.
fn choose_encoder(path: &Path, adapter: &IpAdapter, candidates: &[PathBuf]) -> Result<PathBuf> {
    let existing: Vec<&PathBuf> = candidates.iter().filter(|d| d.join("config.json").is_file()).collect();
    if existing.is_empty() {
        let list: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "no image encoder for the IP-Adapter {}: looked in {}; give the CLIPVisionModelWithProjection folder it \
             was trained with (--ip-encoder)",
            path.display(),
            list.join(" and ")
        );
    }
    let hidden = adapter.reads_hidden_states();
    let what = if hidden { "hidden states" } else { "image_embeds" };
    let mut made = Vec::with_capacity(existing.len());
    for dir in existing {
        let cfg = read_vision_config(&dir.join("config.json"))
            .with_context(|| format!("reading the image encoder config of {}", dir.display()))?;
        let width = if hidden { cfg.hidden_size } else { cfg.projection_dim };
        if width == adapter.input_dim() {
            return Ok(dir.clone());
        }
        made.push(format!("{} makes {width}-wide {what}", dir.display()));
    }
    bail!(
        "no image encoder fits the IP-Adapter {}, which takes {}-wide {what}: {}; use the encoder it was trained \
         with (ViT-H for the SD1.5 and *_vit-h adapters, ViT-bigG for ip-adapter_sdxl)",
        path.display(),
        adapter.input_dim(),
        made.join(", ")
    )
}

/// Each adapter's tokens for the whole UNet batch: the unconditional rows first (`batch` of them when guidance
/// is on), then `batch` conditional rows per conditional copy (`copies - 1` with guidance, AND parts included).
pub(crate) fn prepare<'a>(
    sd: &'a StableDiffusion,
    req: &GenerationRequest,
    cfg: bool,
    copies: i64,
    kind: Kind,
    device: Device,
) -> Result<Vec<IpAdapterUnit<'a>>> {
    let mut units = Vec::with_capacity(req.ip_adapters.len());
    let b = req.batch_size;
    for (i, input) in req.ip_adapters.iter().enumerate() {
        let loaded = sd.ip_adapter_named(&input.model)?;
        let enc = sd.image_encoders.get(loaded.encoder).context("the IP-Adapter's image encoder is not loaded")?;
        let what = || format!("IP-Adapter {i} ({})", input.model);
        let picture = image_io::rgb_to_tensor(&input.image, Range::Unit, Kind::Float, Device::Cpu);
        let pixels = enc.processor.preprocess(&picture).with_context(what)?;
        let (cond, uncond) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let out = enc.model.forward(&pixels)?;
            if loaded.adapter.reads_hidden_states() {
                let zeros = enc.model.forward(&pixels.zeros_like())?;
                Ok((out.penultimate()?.shallow_clone(), zeros.penultimate()?.shallow_clone()))
            } else {
                Ok((out.image_embeds.shallow_clone(), out.image_embeds.zeros_like()))
            }
        })
        .with_context(what)?;
        let conds = if cfg { copies - 1 } else { copies };
        let mut rows = Vec::with_capacity(2);
        if cfg {
            rows.push(uncond.f_repeat_interleave_self_int(b, 0, None)?);
        }
        rows.push(cond.f_repeat_interleave_self_int(b * conds, 0, None)?);
        let embeds = Tensor::f_cat(&rows, 0)?.f_to_kind(kind)?.f_to_device(device)?;
        let tokens = tch::no_grad(|| loaded.adapter.project(&embeds)).with_context(what)?;
        units.push(IpAdapterUnit { adapter: &loaded.adapter, tokens, scale: input.scale });
    }
    Ok(units)
}

/// The parameters-text entry of adapter `index`: A1111's ControlNet extension runs IP-Adapters as ControlNet
/// units (module `ip-adapter_clip_*`, the adapter as model), so they are written as one (`ControlNet <n>`, numbered
/// after the request's ControlNet units).
pub fn infotext(index: usize, a: &IpAdapterInput, module: &str) -> (String, String) {
    let parts = [
        format!("Module: {module}"),
        format!("Model: {}", a.model),
        format!("Weight: {}", a.scale),
        "Resize Mode: Crop and Resize".to_string(),
        "Guidance Start: 0".to_string(),
        "Guidance End: 1".to_string(),
        "Control Mode: Balanced".to_string(),
    ];
    (format!("ControlNet {index}"), parts.join(", "))
}

impl StableDiffusion {
    /// The A1111 preprocessor name for a loaded adapter's encoder: `ip-adapter_clip_sd15` (ViT-H, 1024-wide
    /// embeds) or `ip-adapter_clip_sdxl` (ViT-bigG), as the extension names them; `ip-adapter_clip` otherwise.
    pub fn ip_adapter_module(&self, name: &str) -> &'static str {
        let Ok(a) = self.ip_adapter_named(name) else { return "ip-adapter_clip" };
        match self.image_encoders.get(a.encoder).map(|e| e.model.config().projection_dim) {
            Some(1024) => "ip-adapter_clip_sd15",
            Some(1280) => "ip-adapter_clip_sdxl",
            _ => "ip-adapter_clip",
        }
    }
}
