//! One generation request, validated before any model work starts (so bad flags fail in milliseconds).

use crate::prompt::Emphasis;
use anyhow::{bail, Result};
use image::{GrayImage, RgbImage};
use sd_schedulers::SamplerChoice;

pub use crate::step_cache::StepCache;

/// txt2img, img2img or inpainting.
#[derive(Clone, Debug)]
pub enum Mode {
    Txt2Img,
    /// Start from `init` noised to `strength` (1.0 = ignore the image).
    Img2Img {
        init: RgbImage,
        strength: f64,
    },
    /// Repaint where `mask` is white. 9-channel UNets get the mask as input; 4-channel UNets use latent masking.
    Inpaint {
        init: RgbImage,
        mask: GrayImage,
        strength: f64,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Txt2Img => "txt2img",
            Mode::Img2Img { .. } => "img2img",
            Mode::Inpaint { .. } => "inpaint",
        }
    }

    pub fn strength(&self) -> Option<f64> {
        match self {
            Mode::Txt2Img => None,
            Mode::Img2Img { strength, .. } | Mode::Inpaint { strength, .. } => Some(*strength),
        }
    }
}

/// Everything one call of [`crate::loader::StableDiffusion::generate`] needs.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass (Turbo, LCM).
    pub cfg_scale: f64,
    /// arXiv 2305.08891 §3.4; 0 disables.
    pub guidance_rescale: f64,
    /// Sampler and sigma schedule, parsed once from what users write ("Euler a", "DPM++ 2M Karras", "default").
    pub sampler: SamplerChoice,
    /// DDIM eta (stochasticity), when the sampler supports it.
    pub eta: Option<f64>,
    pub seed: u64,
    pub width: i64,
    pub height: i64,
    /// Images drawn together from one generator (diffusers' `num_images_per_prompt`).
    pub batch_size: i64,
    /// A1111 numbering: 1 = last layer.
    pub clip_skip: usize,
    /// How `(word:1.3)` weights act (A1111's "Emphasis mode").
    pub emphasis: Emphasis,
    pub mode: Mode,
    /// SDXL micro-conditioning; `None` = the target size, as diffusers defaults.
    pub original_size: Option<(i64, i64)>,
    pub crop_top_left: (i64, i64),
    /// ControlNet units (empty: none), their residuals summed; see [`crate::control`].
    pub control: Vec<ControlInput>,
    /// IP-Adapters (empty: none), each with its image prompt; see [`crate::ip_adapter`].
    pub ip_adapters: Vec<IpAdapterInput>,
    /// Opt-in step caching (off by default); see [`crate::step_cache`].
    pub cache: StepCache,
}

pub use crate::control::ControlInput;
pub use crate::ip_adapter::IpAdapterInput;

impl GenerationRequest {
    /// A txt2img request with diffusers' defaults.
    pub fn txt2img(prompt: &str, width: i64, height: i64) -> Self {
        Self {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.0,
            guidance_rescale: 0.0,
            sampler: SamplerChoice::default(),
            eta: None,
            seed: 0,
            width,
            height,
            batch_size: 1,
            clip_skip: 1,
            emphasis: Emphasis::Original,
            mode: Mode::Txt2Img,
            original_size: None,
            crop_top_left: (0, 0),
            control: Vec::new(),
            ip_adapters: Vec::new(),
            cache: StepCache::Off,
        }
    }

    /// Reject what cannot work, with the reason; `scale` is the VAE's spatial factor (8 for real models).
    pub fn validate(&self, scale: i64) -> Result<()> {
        let multiple = scale.max(8);
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v <= 0 || v % multiple != 0 {
                bail!(
                    "{name} {v} is not a positive multiple of {multiple} (the latent grid needs it); try {}",
                    (v.max(multiple) / multiple) * multiple
                );
            }
            if v > 8192 {
                bail!("{name} {v} is larger than 8192 pixels");
            }
        }
        if self.steps == 0 {
            bail!("steps must be at least 1");
        }
        if self.batch_size < 1 {
            bail!("batch size must be at least 1");
        }
        if !(self.cfg_scale.is_finite()) || self.cfg_scale < 0.0 {
            bail!("the CFG scale must be a finite number ≥ 0 (got {})", self.cfg_scale);
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            bail!("guidance rescale must be within [0, 1] (got {})", self.guidance_rescale);
        }
        if self.clip_skip == 0 {
            bail!("clip skip counts from 1 (A1111 numbering: 1 = last layer)");
        }
        if let Some(s) = self.mode.strength() {
            if !(s > 0.0 && s <= 1.0) {
                bail!("strength must be in (0, 1] (got {s}): 0 would return the input image unchanged");
            }
        }
        crate::control::validate(&self.control)?;
        crate::ip_adapter::validate(&self.ip_adapters)?;
        if !self.cache.is_off() && !self.control.is_empty() {
            bail!("--cache {} does not combine with ControlNet units: their residuals feed the deep blocks a cached step skips", self.cache);
        }
        match &self.mode {
            Mode::Txt2Img => {}
            Mode::Img2Img { init, .. } => check_size("the init image", init.width(), init.height(), self)?,
            Mode::Inpaint { init, mask, .. } => {
                check_size("the init image", init.width(), init.height(), self)?;
                if (mask.width(), mask.height()) != (init.width(), init.height()) {
                    bail!(
                        "the mask is {}x{} but the init image is {}x{}: the mask must have the image's size (white = repaint)",
                        mask.width(), mask.height(), init.width(), init.height()
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_size(flag: &str, w: u32, h: u32, req: &GenerationRequest) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("{flag} is empty ({w}x{h})");
    }
    let _ = req;
    Ok(())
}
