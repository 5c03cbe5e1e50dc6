//! The flags that say how to load a model and finish its images, shared by `sd generate`, `sd serve` and
//! `sd worker` so they load the same way and write the same pixels and labels.

use super::UsageError;
use anyhow::Result;
use sd_core::device::{ComputeDevice, DTypeChoice};
use sd_core::limits;
use sd_pipeline::family::Family;
use sd_pipeline::loader::LoadOptions;
use sd_pipeline::output::{RenderOptions, SafetyMode};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Model: a diffusers folder, a single-file .safetensors/.ckpt checkpoint (converted once, cached), or an
    /// org/name repo id present in the Hugging Face cache
    #[arg(long, short = 'm', env = "SD_MODEL")]
    pub model: String,
    /// Component configs for a single-file checkpoint whose architecture is not standard SD1/SD2/SDXL
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// cpu, cuda, cuda:N, mps or auto
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16, f16 or auto (bf16 on CPUs with native bf16)
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// VAE dtype (default: the compute dtype; f32 for f16 models whose VAE needs upcasting)
    #[arg(long)]
    pub vae_dtype: Option<String>,
    /// Allow f16 on the CPU (very slow)
    #[arg(long)]
    pub force_f16: bool,
    /// Override the detected family: sd1, sd2, sdxl
    #[arg(long)]
    pub family: Option<String>,
    /// Override the prediction type: epsilon, v (v_prediction), sample
    #[arg(long)]
    pub prediction: Option<String>,
    // Help as an attribute: in a doc comment rustdoc would read its brackets as intra-doc links.
    #[arg(
        long,
        default_value = "auto",
        help = "Attention backend: auto (per shape), sdpa, matmul[:N] or sliced[:N] (N = queries per chunk)"
    )]
    pub attention: String,
    /// UNet memory layout: auto (channels-last for bf16 on the CPU), nchw or nhwc (channels-last)
    #[arg(long, default_value = "auto", value_parser = ["auto", "nchw", "nhwc"])]
    pub memory_format: String,
    /// Intra-op threads (default: the number of physical cores; at most 1024)
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=limits::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Use less memory at some cost in speed: tiled VAE decode/encode (also --vae-tiling)
    #[arg(long, visible_alias = "vae-tiling")]
    pub low_memory: bool,
    /// Keep the model in CPU RAM and give the GPU one component at a time (model) or one layer at a time
    /// (sequential, slowest), for GPUs smaller than the model
    #[arg(long, default_value = "none", value_parser = ["none", "model", "sequential"])]
    pub offload: String,
    /// Folder of textual-inversion embeddings (.safetensors/.pt/.bin), used by file name in prompts
    #[arg(long)]
    pub embeddings_dir: Option<PathBuf>,
    /// Folder where <lora:name:weight> prompt tags find name.safetensors
    #[arg(long)]
    pub lora_dir: Option<PathBuf>,
    /// Safety checker: block (default when the model ships one), warn or off
    #[arg(long)]
    pub safety: Option<String>,
    /// A file of terms (one per line) that make sd refuse a prompt
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// SD3: run without the T5 text encoder (not loaded; zeros in its place, as diffusers with text_encoder_3=None)
    #[arg(long)]
    pub no_t5: bool,
    /// SD3: T5 tokens per prompt (diffusers' max_sequence_length)
    #[arg(long, default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(1..=sd_models::t5::tokenizer::MAX_SEQUENCE_LENGTH as u64))]
    pub max_sequence_length: usize,
}

#[derive(clap::Args, Clone, Debug)]
pub struct RenderArgs {
    /// Do not embed the invisible watermark (recorded in the metadata)
    #[arg(long)]
    pub no_watermark: bool,
    /// Enlarge the result by this factor (Lanczos) before labelling and watermarking, e.g. 8 for the 32 px demo
    /// model (the watermark needs 256×256 pixels)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub upscale: u32,
    /// Draw a visible "AI生成 / AI-generated" label (or TEXT) in a corner
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub visible_label: Option<String>,
    /// Invisible watermark method: dwtDct (Stable Diffusion's) or dwtDctSvd (survives JPEG and resizing);
    /// default: dwtDct for PNG and lossless WebP, dwtDctSvd for JPEG and lossy WebP
    #[arg(long, value_parser = ["dwtDct", "dwtDctSvd"])]
    pub watermark_method: Option<String>,
    /// JPEG and WebP quality, 1–100 (default 90)
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: Option<u8>,
    /// Write WebP losslessly (default: lossy at --quality)
    #[arg(long, conflicts_with = "quality")]
    pub lossless: bool,
}

/// `--cache` of `sd serve` and `sd worker`: the step cache of requests that do not choose one.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeCacheArgs {
    #[arg(
        long,
        default_value = "off",
        value_name = "MODE[:PARAMS]",
        value_parser = super::generate::parse_cache,
        help = "Step caching for requests that do not choose one (A1111 option sd_rs_step_cache): off, or deepcache[:interval=N,branch=B] as in sd generate --cache; workers on a queue apply their own --cache"
    )]
    pub cache: sd_pipeline::step_cache::StepCache,
}

impl RenderArgs {
    /// Render options for PNG output (the server's); `sd generate` sets the format from `--output`.
    pub fn options(&self, safety: Option<SafetyMode>) -> RenderOptions {
        RenderOptions {
            watermark: !self.no_watermark,
            upscale: self.upscale,
            visible_label: self.visible_label.clone(),
            safety: safety.unwrap_or(SafetyMode::Block),
            // clap restricts the values to the two names
            watermark_method: self.watermark_method.as_deref().and_then(|m| m.parse().ok()),
            quality: self.quality.unwrap_or(sd_provenance::formats::DEFAULT_JPEG_QUALITY),
            lossless: self.lossless,
            ..Default::default()
        }
    }
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.to_string()))
}

impl LoadArgs {
    /// The safety mode asked for (`None`: the default, block when the model ships a checker).
    pub fn safety(&self) -> Result<Option<SafetyMode>> {
        self.safety.as_deref().map(|s| s.parse::<SafetyMode>().map_err(usage)).transpose()
    }

    /// Check every flag and turn them into load options (sets the intra-op thread count as a side effect).
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device_choice: ComputeDevice = self.device.parse().map_err(usage)?;
        let dtype_choice: DTypeChoice = self.dtype.parse().map_err(usage)?;
        let family = match &self.family {
            Some(f) if f != "auto" => Some(f.parse::<Family>().map_err(usage)?),
            _ => None,
        };
        let prediction = match self.prediction.as_deref() {
            None | Some("auto") => None,
            Some("epsilon") | Some("eps") => Some("epsilon".to_string()),
            Some("v") | Some("v_prediction") | Some("v-prediction") => Some("v_prediction".to_string()),
            Some("sample") => Some("sample".to_string()),
            Some(other) => return Err(usage(format!("--prediction {other}: expected epsilon, v or sample"))),
        };
        let safety = self.safety()?;
        let attention: sd_models::attention::AttentionMode = self.attention.parse().map_err(usage)?;
        match self.threads {
            Some(n) => sd_core::device::set_compute_threads(n),
            None => sd_core::device::set_compute_threads(sd_core::device::physical_cores()),
        }
        if let Some(dir) = &self.embeddings_dir {
            if !dir.is_dir() {
                anyhow::bail!("--embeddings-dir {}: no such folder", dir.display());
            }
        }
        if let Some(dir) = &self.lora_dir {
            if !dir.is_dir() {
                anyhow::bail!("--lora-dir {}: no such folder", dir.display());
            }
        }
        let device = device_choice.resolve()?;
        let dtype = dtype_choice.resolve(device, self.force_f16).map_err(usage)?;
        let vae_dtype = match &self.vae_dtype {
            Some(v) => Some(v.parse::<DTypeChoice>().map_err(usage)?.resolve(device, self.force_f16)?),
            None => None,
        };
        let mut opts = LoadOptions::cpu(dtype);
        opts.device = device;
        opts.vae_dtype = vae_dtype;
        opts.dtype_auto = dtype_choice == DTypeChoice::Auto;
        opts.family = family;
        opts.prediction_type = prediction;
        opts.load_safety_checker = safety != Some(SafetyMode::Off);
        opts.attention = attention;
        opts.channels_last = match self.memory_format.as_str() {
            "nhwc" => Some(true),
            "nchw" => Some(false),
            _ => None,
        };
        opts.low_memory = self.low_memory;
        // clap restricts the values to the three names
        opts.offload = self.offload.parse().map_err(usage)?;
        opts.config_dir = self.config_dir.clone();
        Ok(opts)
    }
}

/// The inference engine's settings for `sd serve` and `sd worker`: load options, rendering, the policy file read
/// once, and TAESD previews (every `preview_every` steps when `taesd` is given).
pub fn engine_config(
    load: &LoadArgs,
    render: &RenderArgs,
    taesd: Option<&PathBuf>,
    preview_every: usize,
    sign: Option<sd_provenance::credentials::Identity>,
) -> Result<sd_server::engine::EngineConfig> {
    use anyhow::Context;
    let safety = load.safety()?;
    let options = load.load_options()?;
    let policy = match &load.policy {
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("cannot read policy file {}", p.display()))?,
        )),
        None => None,
    };
    Ok(sd_server::engine::EngineConfig {
        load: options,
        lora_dir: load.lora_dir.clone(),
        controlnet_dir: None,
        ip_encoders: Vec::new(),
        embeddings_dir: load.embeddings_dir.clone(),
        render: RenderOptions { c2pa: sign.map(std::sync::Arc::new), ..render.options(safety) },
        policy,
        preview_taesd: taesd.cloned(),
        preview_every: if taesd.is_some() { preview_every } else { 0 },
        no_t5: load.no_t5,
        max_sequence_length: load.max_sequence_length,
        cache: sd_pipeline::step_cache::StepCache::Off,
    })
}

/// `--queue`: a Redis URL (a usage error otherwise), for `sd serve` and `sd worker`.
pub fn check_queue_url(url: &str) -> Result<()> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") && !url.starts_with("unix://") {
        return Err(usage(format!("--queue {url}: expected a Redis URL (redis://HOST:PORT[/DB])")));
    }
    Ok(())
}

/// `--controlnet-dir` and `--ip-encoder` of `sd serve` and `sd worker`: usage errors (exit 2) before any model loads.
pub fn check_unit_folders(controlnet_dir: Option<&std::path::Path>, ip_encoders: &[PathBuf]) -> Result<()> {
    if let Some(dir) = controlnet_dir {
        if !dir.is_dir() {
            return Err(usage(format!("--controlnet-dir {}: no such folder", dir.display())));
        }
    }
    for dir in ip_encoders {
        if !dir.join("config.json").is_file() {
            return Err(usage(format!(
                "--ip-encoder {}: not an image encoder folder (config.json missing); expected a \
                 CLIPVisionModelWithProjection folder such as IP-Adapter's models/image_encoder",
                dir.display()
            )));
        }
    }
    Ok(())
}
