//! The job model every API and every backend shares: a serialisable request with an id, its progress and its
//! result. A job travels unchanged through the in-process queue and (with `--queue redis://…`) through Redis, so
//! everything here is plain data (images as base64 PNG), never tensors or handles.

use sd_provenance::formats::OutputFormat;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A job's id: a UUID v4 in its hyphenated text form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Accepts only the UUID form we issue, so ids from URLs are never used as anything else (keys, paths).
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s).ok().map(|u| Self(u.hyphenated().to_string()))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// txt2img, or img2img / inpainting from an init image (and a mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Txt2img,
    Img2img,
}

/// One generation request, validated and with every default resolved (the seed included), as the engine runs it.
/// The same values given to `sd generate` give the same pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub kind: JobKind,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    /// Sampler as users write it ("Euler a", "dpmpp-2m", "default" = the model's own).
    pub sampler: String,
    /// Sigma schedule ("karras", …); `None` = the sampler's own.
    pub schedule: Option<String>,
    /// DDIM η, when the sampler takes one.
    pub eta: Option<f64>,
    /// Never random here: the API layer draws a seed for `-1` before the job is queued, so a job is reproducible.
    pub seed: u64,
    pub width: i64,
    pub height: i64,
    /// Images drawn together from one seed (`sd generate --batch-size`).
    pub batch_size: i64,
    /// Batches one after the other, seed + 1 each (`sd generate --batch-count`; A1111's `n_iter`).
    pub n_iter: u32,
    /// A1111 numbering (1 = last layer).
    pub clip_skip: usize,
    /// A1111's emphasis mode name ("Original", "No norm", …).
    pub emphasis: String,
    /// Catalog title of the model to use; `None` = whatever is loaded.
    pub model: Option<String>,
    /// img2img: the init image as base64 PNG/JPEG/WebP bytes.
    pub init_image: Option<String>,
    /// Inpainting mask (white = repaint), base64 image bytes.
    pub mask: Option<String>,
    /// How much of the init image to repaint, (0, 1] (`sd generate --strength`).
    pub denoising_strength: f64,
    /// Swap black and white in the mask (A1111's `inpainting_mask_invert`).
    pub mask_invert: bool,
    /// A1111's hires fix (`enable_hr`): a second, img2img pass at a larger size.
    #[serde(default)]
    pub hires: Option<HiresSpec>,
    /// The encoded images' format: A1111's `samples_format` option, OpenAI's `output_format`.
    #[serde(default)]
    pub format: OutputFormat,
    /// JPEG and lossy WebP quality 1–100 (A1111's `jpeg_quality`, OpenAI's `output_compression`); `None` = the
    /// default that keeps the watermark readable.
    #[serde(default)]
    pub quality: Option<u8>,
    /// WebP: lossless (A1111's `webp_lossless`); `None` = the server's default (`sd serve --lossless`).
    #[serde(default)]
    pub lossless: Option<bool>,
    /// The file the client uploaded, base64, when `init_image` is a re-encoding of it (OpenAI edits fold the mask
    /// out of its alpha channel): the C2PA parent ingredient and the creator's opt-out are read from the original.
    #[serde(default)]
    pub init_file: Option<String>,
    /// ControlNet units (A1111's ControlNet extension), run on ControlNets of `--controlnet-dir`.
    #[serde(default)]
    pub controlnet: Vec<ControlUnitSpec>,
    /// IP-Adapter units (A1111's ControlNet extension runs IP-Adapters as ControlNet units), run on IP-Adapter
    /// files of `--controlnet-dir`.
    #[serde(default)]
    pub ip_adapters: Vec<IpAdapterSpec>,
    /// The SDXL refiner that finishes the base's picture (A1111's `refiner_checkpoint`, `refiner_switch_at`).
    #[serde(default)]
    pub refiner: Option<RefinerSpec>,
    /// Step caching as `sd generate --cache` writes it ("deepcache:interval=3"); `None` = the server's default
    /// (`sd serve --cache`, off unless set), which applies to UNet jobs without ControlNet units.
    #[serde(default)]
    pub cache: Option<String>,
}

/// The SDXL refiner as a job carries it (see `sd_pipeline::refiner`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefinerSpec {
    /// A model of the server's catalog, as clients name it.
    pub model: String,
    /// Fraction of the denoising the base does before the refiner takes over, in (0, 1).
    pub switch_at: f64,
}

/// One ControlNet unit as a job carries it (see `crate::controlnet`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlUnitSpec {
    /// Folder name under `--controlnet-dir`.
    pub model: String,
    /// The control picture, base64 image bytes.
    pub image: String,
    pub weight: f64,
    pub guidance_start: f64,
    pub guidance_end: f64,
    /// "ControlNet is more important" (diffusers' guess mode).
    pub guess_mode: bool,
    /// just, crop or fill.
    pub resize_mode: String,
    /// none or canny.
    pub module: String,
    pub threshold_a: f64,
    pub threshold_b: f64,
}

/// One IP-Adapter unit as a job carries it (see `crate::controlnet`): a ControlNet unit whose model is an
/// IP-Adapter file. Guidance start and end are always 0 and 1 (the unit is refused otherwise), as `sd generate`
/// runs adapters, so they are not carried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpAdapterSpec {
    /// The adapter's name in `--controlnet-dir` (its file stem).
    pub model: String,
    /// The image prompt, base64 image bytes.
    pub image: String,
    /// The adapter's scale (`sd generate --ip-scale`).
    pub weight: f64,
    /// The unit's preprocessor as sent (an `ip-adapter*` module or "none"); the encoder is chosen by what the
    /// adapter takes, not by this name.
    pub module: String,
}

/// The hires fix as a job carries it (see `sd_pipeline::hires::Hires`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HiresSpec {
    pub scale: f64,
    pub resize: Option<(i64, i64)>,
    pub steps: Option<usize>,
    pub strength: f64,
    pub upscaler: String,
    /// The second pass's sampler (A1111 form), prompt and negative prompt; `None` = the first pass's.
    #[serde(default)]
    pub sampler: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub negative_prompt: Option<String>,
}

impl HiresSpec {
    pub fn to_hires(&self) -> anyhow::Result<sd_pipeline::hires::Hires> {
        Ok(sd_pipeline::hires::Hires {
            scale: self.scale,
            resize: self.resize,
            steps: self.steps,
            strength: self.strength,
            upscaler: self.upscaler.parse()?,
            sampler: self.sampler.as_deref().map(str::parse).transpose()?,
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
        })
    }
}

impl JobRequest {
    /// Images this job will produce (before the safety checker).
    pub fn image_count(&self) -> u64 {
        self.batch_size.max(0) as u64 * u64::from(self.n_iter)
    }

    /// Sampler steps the job runs in total (img2img runs `steps × strength` per batch, as diffusers and A1111 do).
    pub fn total_steps(&self) -> usize {
        let per = match self.kind {
            JobKind::Txt2img => self.steps,
            JobKind::Img2img => ((self.steps as f64 * self.denoising_strength) as usize).clamp(1, self.steps.max(1)),
        };
        per * self.n_iter as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where a running job is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Sampler steps done in the current batch.
    pub step: usize,
    /// Sampler steps of the current batch.
    pub steps: usize,
    /// Batch being run, from 0 (A1111's `job_no`).
    pub batch: u32,
    /// Batches in the job (A1111's `job_count`).
    pub batches: u32,
    /// Seconds since the job started running.
    pub elapsed_s: f64,
    /// Latest preview of the current batch's first image, base64 PNG (only with TAESD previews on).
    pub preview: Option<String>,
    /// Step at which `preview` was taken.
    pub preview_step: usize,
}

impl Progress {
    /// Fraction of the whole job done, in [0, 1] (A1111's formula: batches done plus the current batch's share).
    pub fn fraction(&self) -> f64 {
        if self.batches == 0 {
            return 0.0;
        }
        let within = if self.steps == 0 { 0.0 } else { self.step as f64 / self.steps as f64 };
        ((self.batch as f64 + within) / self.batches as f64).clamp(0.0, 1.0)
    }

    /// Seconds left, extrapolated from the time so far (A1111's `eta_relative`).
    pub fn eta_s(&self) -> f64 {
        let f = self.fraction();
        if f <= 0.0 {
            return 0.0;
        }
        (self.elapsed_s / f - self.elapsed_s).max(0.0)
    }
}

/// One returned image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultImage {
    /// The base64 file (PNG, JPEG or WebP) with the parameters, labels, watermark and Content Credentials
    /// `sd generate` writes.
    #[serde(alias = "png")]
    pub data: String,
    #[serde(default)]
    pub format: OutputFormat,
    pub seed: u64,
    /// The A1111 `parameters` text stored in the PNG.
    pub infotext: String,
    /// Position in the job's images (batch × batch_size + index in batch), before blocked images were removed.
    pub index: usize,
}

/// What a finished job produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub images: Vec<ResultImage>,
    /// Positions of images the safety checker blocked (never returned, as `sd generate` never writes them).
    pub blocked: Vec<usize>,
    /// Stopped early by an interrupt: the images show where sampling had got to.
    pub interrupted: bool,
    /// The model that made the images (catalog title).
    pub model: String,
    /// A1111's model hash of that model, when known.
    pub model_hash: Option<String>,
    /// Seconds from start to finish on the worker.
    pub run_s: f64,
    /// UTC time the job started, `YYYYMMDDhhmmss` (A1111's `job_timestamp`).
    pub started: String,
}

/// Everything a client may ask about a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub status: JobStatus,
    pub request: JobRequest,
    pub progress: Progress,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    /// Unix seconds.
    pub created: f64,
    /// Position in the queue (0 = next), while queued (known for the in-process queue only).
    pub queue_position: Option<usize>,
    /// The `sd worker` that runs or ran the job (Redis queue only).
    #[serde(default)]
    pub worker: Option<String>,
}
