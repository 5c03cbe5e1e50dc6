//! AUTOMATIC1111's "hires fix": draw the picture at the model's comfortable size, enlarge it, then repaint it at
//! the large size with img2img, so composition comes from the native resolution and detail from the second pass.
//! Two ways to enlarge, by A1111's names: "Lanczos" enlarges the decoded 8-bit image (then img2img encodes it
//! again), the "Latent …" modes resize the first pass's latents with `torch.nn.functional.interpolate` (the mode and
//! antialias flag of A1111's `shared.latent_upscale_modes`) and start the second pass from them: nothing is decoded
//! in between. Both are built from the pipelines that already exist, which is also how the references compose
//! diffusers' pipelines (`scripts/fixtures/gen_87_hires.py`, `gen_86_hires_latent.py`). The second pass may use its
//! own sampler and prompts (A1111's `hr_sampler_name`, `hr_prompt`, `hr_negative_prompt`).

use crate::generate::{EncodedPrompts, Event, Flow, Generated};
use crate::loader::StableDiffusion;
use crate::prompt::schedule::Pass;
use crate::request::{GenerationRequest, Mode};
use crate::stage::Stage;
use anyhow::{bail, Context, Result};
use sd_core::image_io::{tensor_to_rgb, Range};
use sd_schedulers::SamplerChoice;
use std::str::FromStr;
use tch::Tensor;

/// How the first pass's latents are resized (A1111's latent upscale modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentUpscale {
    Bilinear,
    BilinearAntialiased,
    Bicubic,
    BicubicAntialiased,
    Nearest,
    NearestExact,
}

impl LatentUpscale {
    pub const ALL: [LatentUpscale; 6] = [
        LatentUpscale::Bilinear,
        LatentUpscale::BilinearAntialiased,
        LatentUpscale::Bicubic,
        LatentUpscale::BicubicAntialiased,
        LatentUpscale::Nearest,
        LatentUpscale::NearestExact,
    ];

    pub fn a1111_name(self) -> &'static str {
        match self {
            LatentUpscale::Bilinear => "Latent",
            LatentUpscale::BilinearAntialiased => "Latent (antialiased)",
            LatentUpscale::Bicubic => "Latent (bicubic)",
            LatentUpscale::BicubicAntialiased => "Latent (bicubic antialiased)",
            LatentUpscale::Nearest => "Latent (nearest)",
            LatentUpscale::NearestExact => "Latent (nearest-exact)",
        }
    }

    /// `interpolate(latents, size=(h, w), mode, antialias)` with `align_corners` left at its default (false).
    pub fn resize(self, latents: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let size = [h, w];
        let t = match self {
            LatentUpscale::Bilinear => latents.f_upsample_bilinear2d(size, false, None, None),
            LatentUpscale::BilinearAntialiased => latents.f_internal_upsample_bilinear2d_aa(size, false, None, None),
            LatentUpscale::Bicubic => latents.f_upsample_bicubic2d(size, false, None, None),
            LatentUpscale::BicubicAntialiased => latents.f_internal_upsample_bicubic2d_aa(size, false, None, None),
            LatentUpscale::Nearest => latents.f_upsample_nearest2d(size, None, None),
            LatentUpscale::NearestExact => latents.f_internal_upsample_nearest_exact2d(size, None, None),
        };
        t.with_context(|| format!("resizing the latents to {w}x{h} ({})", self.a1111_name()))
    }
}

/// How the first pass's images are enlarged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upscaler {
    /// Lanczos (a = 3) on the 8-bit image; A1111's "Lanczos" and its "None" (a plain resize).
    Lanczos,
    /// The latents resized, no VAE round trip.
    Latent(LatentUpscale),
}

impl Upscaler {
    pub fn a1111_name(self) -> &'static str {
        match self {
            Upscaler::Lanczos => "Lanczos",
            Upscaler::Latent(l) => l.a1111_name(),
        }
    }

    /// Every name accepted, as A1111 writes them.
    pub fn names() -> Vec<&'static str> {
        let mut v = vec!["Lanczos", "None"];
        v.extend(LatentUpscale::ALL.iter().map(|l| l.a1111_name()));
        v
    }
}

impl FromStr for Upscaler {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase();
        match key.as_str() {
            "lanczos" | "none" | "" => return Ok(Upscaler::Lanczos),
            _ => {}
        }
        if let Some(l) = LatentUpscale::ALL.iter().find(|l| l.a1111_name().to_ascii_lowercase() == key) {
            return Ok(Upscaler::Latent(*l));
        }
        let names: Vec<String> = Upscaler::names().iter().map(|n| format!("\"{n}\"")).collect();
        bail!("unknown hires upscaler {s:?}; expected one of {}", names.join(", "))
    }
}

/// The second pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Hires {
    /// Enlargement factor of the first pass's size (A1111's `hr_scale`), used when `resize` is `None`.
    pub scale: f64,
    /// An explicit final size (A1111's `hr_resize_x`/`hr_resize_y`).
    pub resize: Option<(i64, i64)>,
    /// Sampler steps of the second pass before `strength` shortens them; `None` = the first pass's.
    pub steps: Option<usize>,
    /// How much of the enlarged picture is repainted, (0, 1] (A1111's `denoising_strength`).
    pub strength: f64,
    pub upscaler: Upscaler,
    /// The second pass's sampler (A1111's `hr_sampler_name`); `None` = the first pass's.
    pub sampler: Option<SamplerChoice>,
    /// The second pass's prompt and negative prompt (A1111's `hr_prompt`, `hr_negative_prompt`); `None` or empty
    /// = the first pass's, as A1111 treats an empty one.
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
}

/// Largest enlargement accepted (A1111's slider ends at 4).
pub const MAX_SCALE: f64 = 4.0;

impl Hires {
    /// A Lanczos hires fix by `scale` at `strength`, everything else from the first pass.
    pub fn new(scale: f64, strength: f64) -> Self {
        Self {
            scale,
            resize: None,
            steps: None,
            strength,
            upscaler: Upscaler::Lanczos,
            sampler: None,
            prompt: None,
            negative_prompt: None,
        }
    }

    /// The final size for a first pass of `width`×`height`: `resize`, or the scaled size floored to a multiple
    /// of 8 (the latent grid).
    pub fn target(&self, width: i64, height: i64) -> Result<(i64, i64)> {
        let (w, h) = match self.resize {
            Some(s) => s,
            None => ((width as f64 * self.scale) as i64, (height as f64 * self.scale) as i64),
        };
        let (w, h) = (w / 8 * 8, h / 8 * 8);
        if w < 8 || h < 8 {
            bail!("the hires size {w}x{h} is too small");
        }
        Ok((w, h))
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale >= 1.0 && self.scale <= MAX_SCALE) {
            bail!("hires scale {} must be within [1, {MAX_SCALE}]", self.scale);
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            bail!("hires strength must be in (0, 1] (got {})", self.strength);
        }
        if self.steps == Some(0) {
            bail!("hires steps must be at least 1 (or left out: the first pass's steps)");
        }
        if let Some((w, h)) = self.resize {
            if w <= 0 || h <= 0 {
                bail!("hires resize {w}x{h} must be positive");
            }
        }
        Ok(())
    }

    /// A1111's infotext pairs for the second pass (`sampler_label`: the sampler the second pass really used, named
    /// only when it differs from the first's; prompts only when they differ, as A1111 writes them).
    fn params(&self, req: &GenerationRequest, steps: usize, sampler_label: Option<&str>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self.resize {
            Some((w, h)) => out.push(("Hires resize".to_string(), format!("{w}x{h}"))),
            None => out.push(("Hires upscale".to_string(), trim_float(self.scale))),
        }
        if self.steps.is_some() {
            out.push(("Hires steps".to_string(), steps.to_string()));
        }
        out.push(("Hires upscaler".to_string(), self.upscaler.a1111_name().to_string()));
        if let Some(label) = sampler_label {
            out.push(("Hires sampler".to_string(), label.to_string()));
        }
        let (prompt, negative) = self.prompts(req);
        if prompt != req.prompt {
            out.push(("Hires prompt".to_string(), prompt));
        }
        if negative != req.negative_prompt {
            out.push(("Hires negative prompt".to_string(), negative));
        }
        out
    }

    /// The second pass's prompt and negative prompt.
    pub fn prompts(&self, req: &GenerationRequest) -> (String, String) {
        let pick = |own: &Option<String>, first: &str| match own {
            Some(p) if !p.is_empty() => p.clone(),
            _ => first.to_string(),
        };
        (pick(&self.prompt, &req.prompt), pick(&self.negative_prompt, &req.negative_prompt))
    }

    /// The second pass's request at the final size (its mode is set per upscaler).
    fn second_request(&self, req: &GenerationRequest, (w, h): (i64, i64)) -> GenerationRequest {
        let mut second = req.clone();
        second.width = w;
        second.height = h;
        second.steps = self.steps.unwrap_or(req.steps);
        second.sampler = self.sampler.unwrap_or(req.sampler);
        (second.prompt, second.negative_prompt) = self.prompts(req);
        second
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// What the second pass added, for the image's parameters.
#[derive(Clone, Debug, Default)]
pub struct HiresApplied {
    pub strength: f64,
    pub params: Vec<(String, String)>,
}

impl StableDiffusion {
    /// The second pass's prompts encoded, when they differ from the first pass's (`None`: reuse those). A caller
    /// that frees the text encoders after encoding calls this first.
    pub fn encode_hires_prompts(
        &self,
        req: &GenerationRequest,
        hires: &Hires,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Option<EncodedPrompts>> {
        let (prompt, negative) = hires.prompts(req);
        if prompt == req.prompt && negative == req.negative_prompt {
            return Ok(None);
        }
        let mut r = req.clone();
        (r.prompt, r.negative_prompt) = (prompt, negative);
        // the second pass's own prompts may carry schedules too, counted on from the first pass
        let pass = Pass::Hires { first_steps: req.steps, steps: hires.steps.unwrap_or(req.steps) };
        Ok(Some(self.encode_prompts_for(&r, &[pass], on_event).context("encoding the hires prompts")?))
    }

    /// Both passes for `req` (a txt2img request at the first-pass size): the first pass, its images or latents
    /// enlarged, then img2img at the final size with the same seed. Events of both passes go to `on_event`; an
    /// interrupt during the first pass returns its images unrepainted. Hires prompts that differ from the first
    /// pass's are encoded here (see [`Self::generate_hires_with`] when the text encoders were released).
    pub fn generate_hires_encoded(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        hires: &Hires,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        let second = self.encode_hires_prompts(req, hires, on_event)?;
        self.generate_hires_with(req, encoded, second.as_ref(), hires, on_event)
    }

    /// [`Self::generate_hires_encoded`] with the hires prompts already encoded (`None`: the first pass's).
    pub fn generate_hires_with(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        hires_encoded: Option<&EncodedPrompts>,
        hires: &Hires,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        hires.validate()?;
        if !matches!(req.mode, Mode::Txt2Img) {
            bail!("the hires fix applies to txt2img only");
        }
        let (w, h) = hires.target(req.width, req.height)?;
        let latent_mode = match hires.upscaler {
            Upscaler::Latent(l) => Some(l),
            Upscaler::Lanczos => None,
        };
        let first_stage = Stage { output_latents: latent_mode.is_some(), ..Default::default() };
        let (mut first, first_latents) = self.generate_stage(req, encoded, &first_stage, on_event)?;
        if first.interrupted || first.steps_done == 0 {
            if latent_mode.is_some() && first.steps_done > 0 {
                self.decode_generated(&mut first, &first_latents, on_event)?;
            }
            return Ok(first);
        }
        let mut second = hires.second_request(req, (w, h));
        second.validate(self.vae_scale_factor())?;
        let enc2 = hires_encoded.unwrap_or(encoded);
        let mut out = match latent_mode {
            Some(l) => {
                let scale = self.vae_scale_factor();
                let big = tch::no_grad(|| l.resize(&first_latents, h / scale, w / scale))?;
                let stage = Stage {
                    latents: Some(big),
                    strength: Some(hires.strength),
                    pass: Some(Pass::Hires { first_steps: req.steps, steps: second.steps }),
                    ..Default::default()
                };
                self.generate_stage(&second, enc2, &stage, on_event)?.0
            }
            None => self.repaint_each(&first, &mut second, enc2, hires, req.steps, on_event)?,
        };
        out.timings.encode_s += first.timings.encode_s;
        out.timings.denoise_s += first.timings.denoise_s;
        out.timings.decode_s += first.timings.decode_s;
        out.unet_calls += first.unet_calls;
        out.shallow_calls += first.shallow_calls;
        out.steps_done += first.steps_done;
        out.seed = req.seed;
        let own_sampler = (out.sampler_label != first.sampler_label).then_some(out.sampler_label.as_str());
        let params = hires.params(req, second.steps, own_sampler);
        out.sampler_label = first.sampler_label;
        out.schedule_label = first.schedule_label;
        out.hires = Some(HiresApplied { strength: hires.strength, params });
        Ok(out)
    }

    /// The image path: each first-pass image enlarged with Lanczos and repainted alone (img2img, batch of one).
    fn repaint_each(
        &self,
        first: &Generated,
        second: &mut GenerationRequest,
        encoded: &EncodedPrompts,
        hires: &Hires,
        first_steps: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        second.batch_size = 1;
        let (w, h) = (second.width as u32, second.height as u32);
        let mut out: Option<Generated> = None;
        for image in &first.images {
            let small = tensor_to_rgb(image, Range::Unit)?;
            let big = sd_core::resample::lanczos_rgb(&small, w, h)?;
            second.mode = Mode::Img2Img { init: big, strength: hires.strength };
            let stage = Stage { pass: Some(Pass::Hires { first_steps, steps: second.steps }), ..Default::default() };
            let g = self.generate_stage(second, encoded, &stage, on_event)?.0;
            out = Some(match out {
                None => g,
                Some(mut acc) => {
                    acc.images.extend(g.images);
                    acc.timings.encode_s += g.timings.encode_s;
                    acc.timings.denoise_s += g.timings.denoise_s;
                    acc.timings.decode_s += g.timings.decode_s;
                    acc.unet_calls += g.unet_calls;
                    acc.shallow_calls += g.shallow_calls;
                    acc.steps_done += g.steps_done;
                    acc.interrupted |= g.interrupted;
                    acc
                }
            });
            if out.as_ref().is_some_and(|o| o.interrupted) {
                break;
            }
        }
        out.context("the first pass produced no image")
    }
}
