//! AUTOMATIC1111's "hires fix": draw the picture at the model's comfortable size, enlarge the 8-bit result, then
//! repaint it at the large size with img2img, so composition comes from the native resolution and detail from the
//! second pass. Built from the two pipelines that already exist (txt2img, then img2img at `strength` from the
//! enlarged image, same seed and prompts), which is also how the reference composes diffusers' pipelines
//! (`scripts/fixtures/gen_87_hires.py`).

use crate::generate::{EncodedPrompts, Event, Flow, Generated};
use crate::loader::StableDiffusion;
use crate::request::{GenerationRequest, Mode};
use anyhow::{bail, Context, Result};
use sd_core::image_io::{tensor_to_rgb, Range};
use std::str::FromStr;

/// How the first pass's images are enlarged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upscaler {
    /// Lanczos (a = 3) on the 8-bit image; A1111's "Lanczos" and its "None" (a plain resize).
    Lanczos,
}

impl Upscaler {
    pub fn a1111_name(self) -> &'static str {
        match self {
            Upscaler::Lanczos => "Lanczos",
        }
    }
}

impl FromStr for Upscaler {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lanczos" | "none" | "" => Ok(Upscaler::Lanczos),
            l if l.starts_with("latent") => bail!(
                "hires upscaler {s:?}: latent upscaling is not supported; use \"Lanczos\" (the image is enlarged, then repainted)"
            ),
            _ => bail!("unknown hires upscaler {s:?}; expected \"Lanczos\" (or \"None\", a plain Lanczos resize)"),
        }
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
}

/// Largest enlargement accepted (A1111's slider ends at 4).
pub const MAX_SCALE: f64 = 4.0;

impl Hires {
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

    /// A1111's infotext pairs for the second pass.
    fn params(&self, first: (i64, i64), steps: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self.resize {
            Some((w, h)) => out.push(("Hires resize".to_string(), format!("{w}x{h}"))),
            None => out.push(("Hires upscale".to_string(), trim_float(self.scale))),
        }
        if self.steps.is_some() {
            out.push(("Hires steps".to_string(), steps.to_string()));
        }
        out.push(("Hires upscaler".to_string(), self.upscaler.a1111_name().to_string()));
        let _ = first;
        out
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
    /// Both passes for `req` (a txt2img request at the first-pass size): the first pass, each image enlarged, then
    /// img2img at the final size with the same seed and prompts. Events of both passes go to `on_event`; an
    /// interrupt during the first pass returns its images unrepainted.
    pub fn generate_hires_encoded(
        &self,
        req: &GenerationRequest,
        encoded: &EncodedPrompts,
        hires: &Hires,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Generated> {
        hires.validate()?;
        if !matches!(req.mode, Mode::Txt2Img) {
            bail!("the hires fix applies to txt2img only");
        }
        let (w, h) = hires.target(req.width, req.height)?;
        let first = self.generate_encoded(req, encoded, on_event)?;
        if first.interrupted || first.images.is_empty() {
            return Ok(first);
        }
        let mut second = req.clone();
        second.width = w;
        second.height = h;
        second.steps = hires.steps.unwrap_or(req.steps);
        second.batch_size = 1;
        second.validate(self.vae_scale_factor())?;
        let mut out: Option<Generated> = None;
        for image in &first.images {
            let small = tensor_to_rgb(image, Range::Unit)?;
            let big = match hires.upscaler {
                Upscaler::Lanczos => sd_core::resample::lanczos_rgb(&small, w as u32, h as u32)?,
            };
            second.mode = Mode::Img2Img { init: big, strength: hires.strength };
            let g = self.generate_encoded(&second, encoded, on_event)?;
            out = Some(match out {
                None => g,
                Some(mut acc) => {
                    acc.images.extend(g.images);
                    acc.timings.encode_s += g.timings.encode_s;
                    acc.timings.denoise_s += g.timings.denoise_s;
                    acc.timings.decode_s += g.timings.decode_s;
                    acc.unet_calls += g.unet_calls;
                    acc.steps_done += g.steps_done;
                    acc.interrupted |= g.interrupted;
                    acc
                }
            });
            if out.as_ref().is_some_and(|o| o.interrupted) {
                break;
            }
        }
        let mut g = out.context("the first pass produced no image")?;
        g.timings.encode_s += first.timings.encode_s;
        g.timings.denoise_s += first.timings.denoise_s;
        g.timings.decode_s += first.timings.decode_s;
        g.unet_calls += first.unet_calls;
        g.steps_done += first.steps_done;
        g.seed = req.seed;
        g.hires = Some(HiresApplied {
            strength: hires.strength,
            params: hires.params((req.width, req.height), second.steps),
        });
        Ok(g)
    }
}
