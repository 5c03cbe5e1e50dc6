//! ControlNet units, as diffusers' `StableDiffusion(XL)ControlNetPipeline` with a `MultiControlNetModel` runs them
//! and as AUTOMATIC1111's ControlNet extension describes them: each unit is one loaded ControlNet, one control
//! picture (optionally turned into a map by a preprocessor, then fitted to the output size by a resize mode), a
//! weight, a guidance window and a control mode. Every active unit's residuals are summed before they reach the UNet.
//!
//! Guess mode (A1111's "ControlNet is more important") is diffusers' `guess_mode`: the unit runs on the
//! conditional half of the CFG batch only, its residuals weighted by `logspace(-1, 0, skips + 1)`, and the
//! unconditional half gets zeros. A1111 implements that control mode differently (its own weighting and a CFG-side
//! injection), so the same settings give different pixels there; diffusers' definition is the one tested here.

use crate::loader::StableDiffusion;
use crate::request::GenerationRequest;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use sd_core::image_io::{self, Filter, Range};
use sd_models::controlnet::{ControlNetModel, ControlResiduals};
use sd_models::unet::{AddedCond, PerBlock, UNetConfig};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// How a control picture of another size or shape is fitted to the output, as the A1111 extension's modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResizeMode {
    /// "Just Resize": stretched to the output size (diffusers' only behaviour).
    Just,
    /// "Crop and Resize": scaled to cover the output, centre cropped (the extension's default).
    #[default]
    Crop,
    /// "Resize and Fill": scaled to fit inside, the rest filled with the median colour of the picture's border.
    Fill,
}

impl ResizeMode {
    /// The extension's label (infotext `Resize Mode`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Just => "Just Resize",
            Self::Crop => "Crop and Resize",
            Self::Fill => "Resize and Fill",
        }
    }
}

impl FromStr for ResizeMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "just" | "just resize" | "0" => Self::Just,
            "crop" | "crop and resize" | "1" => Self::Crop,
            "fill" | "resize and fill" | "2" => Self::Fill,
            other => bail!("unknown control resize mode {other:?}: expected just, crop or fill"),
        })
    }
}

/// What turns the given picture into the control map.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Preprocess {
    /// The picture already is a map (edges, pose, depth).
    #[default]
    None,
    /// OpenCV-style Canny edges with hysteresis thresholds on the L1 Sobel magnitude (see [`crate::canny`]).
    Canny { low: f64, high: f64 },
}

impl Preprocess {
    /// The extension's module name (infotext `Module`).
    pub fn module(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Canny { .. } => "canny",
        }
    }
}

/// One ControlNet unit of a request (diffusers' `image`, `controlnet_conditioning_scale`,
/// `control_guidance_start` / `_end`, `guess_mode`, per ControlNet).
#[derive(Clone, Debug)]
pub struct ControlInput {
    /// The name of a ControlNet loaded into the pipeline ([`StableDiffusion::load_controlnet`]).
    pub model: String,
    pub image: RgbImage,
    pub scale: f64,
    /// Fraction of the steps from which the ControlNet acts, and up to which it acts.
    pub start: f64,
    pub end: f64,
    /// diffusers' `guess_mode` (A1111 "ControlNet is more important").
    pub guess_mode: bool,
    pub resize: ResizeMode,
    pub preprocess: Preprocess,
}

impl ControlInput {
    /// A unit with diffusers' defaults: scale 1 over all steps, balanced, "Just Resize", no preprocessor.
    pub fn new(model: &str, image: RgbImage) -> Self {
        Self {
            model: model.to_string(),
            image,
            scale: 1.0,
            start: 0.0,
            end: 1.0,
            guess_mode: false,
            resize: ResizeMode::Just,
            preprocess: Preprocess::None,
        }
    }

    /// The control map at the output size: preprocessed at the picture's own size, then fitted by the resize mode.
    pub fn control_map(&self, width: u32, height: u32) -> Result<RgbImage> {
        let map = match self.preprocess {
            Preprocess::None => self.image.clone(),
            Preprocess::Canny { low, high } => crate::canny::canny_rgb(&self.image, low, high)?,
        };
        Ok(fit(&map, width, height, self.resize))
    }
}

/// Most units one request may carry (each is a whole contracting UNet half per step).
pub const MAX_UNITS: usize = 8;

/// Check a request's units before any model work.
pub fn validate(units: &[ControlInput]) -> Result<()> {
    if units.len() > MAX_UNITS {
        bail!("{} ControlNet units given; at most {MAX_UNITS} are supported", units.len());
    }
    for (i, c) in units.iter().enumerate() {
        if !c.scale.is_finite() || !(0.0..=10.0).contains(&c.scale) {
            bail!("ControlNet unit {i}: the control scale must be within [0, 10] (got {})", c.scale);
        }
        if !(0.0..=1.0).contains(&c.start) || !(0.0..=1.0).contains(&c.end) || c.start >= c.end {
            bail!(
                "ControlNet unit {i}: the control window must satisfy 0 ≤ start < end ≤ 1 (got {} to {})",
                c.start,
                c.end
            );
        }
        if c.image.width() == 0 || c.image.height() == 0 {
            bail!("ControlNet unit {i}: the control image is empty ({}x{})", c.image.width(), c.image.height());
        }
        if let Preprocess::Canny { low, high } = c.preprocess {
            if !(low.is_finite() && high.is_finite()) || low < 0.0 || high < low || high > 10_000.0 {
                bail!("ControlNet unit {i}: Canny thresholds must satisfy 0 ≤ low ≤ high ≤ 10000 (got {low}, {high})");
            }
        }
    }
    Ok(())
}

/// Fit `img` to `width`×`height` as the A1111 extension does: the scale factor, rounding and centring are its own;
/// the resampling is Pillow's Lanczos (diffusers' control-image resize), not the extension's OpenCV filters.
pub fn fit(img: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> RgbImage {
    let (w0, h0) = (img.width() as f64, img.height() as f64);
    let (kw, kh) = (width as f64 / w0, height as f64 / h0);
    let lanczos = |w: u32, h: u32| image_io::resize(img, w.max(1), h.max(1), Filter::Lanczos);
    match mode {
        ResizeMode::Just => lanczos(width, height),
        ResizeMode::Crop => {
            let k = kw.max(kh);
            let scaled = lanczos((w0 * k).round() as u32, (h0 * k).round() as u32);
            let left = scaled.width().saturating_sub(width) / 2;
            let top = scaled.height().saturating_sub(height) / 2;
            let mut out = RgbImage::new(width, height);
            for (x, y, p) in out.enumerate_pixels_mut() {
                let sx = (x + left).min(scaled.width() - 1);
                let sy = (y + top).min(scaled.height() - 1);
                *p = *scaled.get_pixel(sx, sy);
            }
            out
        }
        ResizeMode::Fill => {
            let k = kw.min(kh);
            let fill = border_median(img);
            let scaled = lanczos((w0 * k).round() as u32, (h0 * k).round() as u32);
            let left = width.saturating_sub(scaled.width()) / 2;
            let top = height.saturating_sub(scaled.height()) / 2;
            let mut out = RgbImage::from_pixel(width, height, fill);
            for (x, y, p) in scaled.enumerate_pixels() {
                if x + left < width && y + top < height {
                    out.put_pixel(x + left, y + top, *p);
                }
            }
            out
        }
    }
}

/// Per channel, the median of the first and last rows and columns (corners counted twice, as the extension's
/// concatenation of the four borders counts them); an even count takes the mean of the middle two, truncated.
fn border_median(img: &RgbImage) -> image::Rgb<u8> {
    let (w, h) = (img.width(), img.height());
    let mut pixels = Vec::with_capacity(2 * (w + h) as usize);
    for x in 0..w {
        pixels.push(*img.get_pixel(x, 0));
        pixels.push(*img.get_pixel(x, h - 1));
    }
    for y in 0..h {
        pixels.push(*img.get_pixel(0, y));
        pixels.push(*img.get_pixel(w - 1, y));
    }
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v: Vec<u8> = pixels.iter().map(|p| p.0[c]).collect();
        v.sort_unstable();
        let n = v.len();
        *o = if n % 2 == 1 { v[n / 2] } else { ((v[n / 2 - 1] as u16 + v[n / 2] as u16) / 2) as u8 };
    }
    image::Rgb(out)
}

/// A ControlNet loaded beside the UNet, under the name units refer to it by (its folder name, or a single file's stem).
pub struct LoadedControlNet {
    pub name: String,
    pub path: PathBuf,
    pub model: ControlNetModel,
}

/// Which base models a UNet-shaped config fits, for mismatch errors ("an SDXL model (cross-attention dim 2048,
/// added conditioning text_time)").
fn describe(cfg: &UNetConfig) -> String {
    let dim = cross_dim(cfg);
    let family = match (dim, cfg.addition_embed_type.as_deref()) {
        (Some(768), None) => "an SD1 model",
        (Some(1024), None) => "an SD2 model",
        (Some(2048), Some("text_time")) => "an SDXL model",
        _ => "a model",
    };
    let dim = dim.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
    let added = cfg.addition_embed_type.as_deref().unwrap_or("none");
    format!("{family} (cross-attention dim {dim}, added conditioning {added})")
}

fn cross_dim(cfg: &UNetConfig) -> Option<i64> {
    match &cfg.cross_attention_dim {
        PerBlock::One(d) => Some(*d),
        PerBlock::Many(v) => v.first().copied(),
    }
}

/// The ControlNet must read the same text conditioning and added embeddings as the UNet it steers.
fn check_fits(unet: &UNetConfig, cn: &UNetConfig, cn_name: &str, model_name: &str) -> Result<()> {
    let same = cross_dim(unet) == cross_dim(cn)
        && unet.addition_embed_type == cn.addition_embed_type
        && unet.projection_class_embeddings_input_dim == cn.projection_class_embeddings_input_dim
        && unet.block_out_channels == cn.block_out_channels;
    if !same {
        bail!(
            "the ControlNet {cn_name} is for {}, but {model_name} is {}: use a ControlNet made for this base model",
            describe(cn),
            describe(unet)
        );
    }
    Ok(())
}

impl StableDiffusion {
    /// Load a ControlNet (a diffusers folder or a single file) beside the UNet (once per path) and return the name units use for it.
    pub fn load_controlnet(&mut self, path: &Path) -> Result<String> {
        if let Some(c) = self.controlnets.iter().find(|c| c.path == path) {
            return Ok(c.name.clone());
        }
        // A1111 names a single-file model by its stem (`control_v11p_sd15_canny`), a folder by its name.
        let name = if path.is_file() { path.file_stem() } else { path.file_name() };
        let name = name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = self.controlnets.iter().find(|c| c.name == name) {
            bail!(
                "two ControlNets are named {name:?} ({} and {}); units refer to ControlNets by folder name or file stem",
                other.path.display(),
                path.display()
            );
        }
        let device = self.offload.load_device();
        let (mut model, weights) = sd_core::weights::capture(|| ControlNetModel::load(path, self.opts.dtype, device))
            .with_context(|| format!("loading the ControlNet {}", path.display()))?;
        check_fits(self.unet()?.config(), model.config(), &name, &self.name)?;
        self.offload.adopt(crate::offload::Group::Denoiser, weights)?;
        model.set_attention_mode(self.opts.attention);
        self.controlnets.push(LoadedControlNet { name: name.clone(), path: path.to_path_buf(), model });
        Ok(name)
    }

    fn controlnet_named(&self, name: &str) -> Result<&LoadedControlNet> {
        self.controlnets.iter().find(|c| c.name == name).with_context(|| {
            let loaded: Vec<&str> = self.controlnets.iter().map(|c| c.name.as_str()).collect();
            format!("the request uses the ControlNet {name:?}, which is not loaded (loaded: {loaded:?})")
        })
    }
}

/// A unit ready for the denoising loop: its model and its control picture as a tensor batch.
pub(crate) struct PreparedUnit<'a> {
    unit: &'a ControlInput,
    model: &'a ControlNetModel,
    /// `[B or 2B, 3, H, W]` in [0, 1]: both CFG halves unless the unit is in guess mode.
    image: Tensor,
}

/// Turn a request's units into tensors once, before the loop.
pub(crate) fn prepare<'a>(
    sd: &'a StableDiffusion,
    req: &'a GenerationRequest,
    cfg: bool,
    kind: Kind,
    device: Device,
) -> Result<Vec<PreparedUnit<'a>>> {
    let mut out = Vec::with_capacity(req.control.len());
    for (i, unit) in req.control.iter().enumerate() {
        let model = &sd.controlnet_named(&unit.model)?.model;
        let map = unit
            .control_map(req.width as u32, req.height as u32)
            .with_context(|| format!("ControlNet unit {i} ({})", unit.model))?;
        let t = image_io::rgb_to_tensor(&map, Range::Unit, kind, device).repeat([req.batch_size, 1, 1, 1]);
        let image = if cfg && !unit.guess_mode { Tensor::cat(&[&t, &t], 0) } else { t };
        out.push(PreparedUnit { unit, model, image });
    }
    Ok(out)
}

/// Step `i` of `total`: every active unit's residuals, summed (diffusers' `MultiControlNetModel`). `input` is the
/// scaled model input of the whole CFG batch, `hidden` / `added` its conditioning (unconditional half first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn residuals(
    units: &[PreparedUnit<'_>],
    i: usize,
    total: usize,
    cfg: bool,
    input: &Tensor,
    t: &Tensor,
    hidden: &Tensor,
    added: Option<&AddedCond>,
) -> Result<Option<ControlResiduals>> {
    let mut sum: Option<ControlResiduals> = None;
    for p in units {
        let c = p.unit;
        // diffusers' controlnet_keep: the unit acts on the steps inside [start, end].
        let n = total as f64;
        let off = (i as f64) / n < c.start || (i as f64 + 1.0) / n > c.end;
        if off || c.scale == 0.0 {
            continue;
        }
        let r = if c.guess_mode && cfg {
            let second = |x: &Tensor| x.chunk(2, 0)[1].shallow_clone();
            let added = added.map(|a| AddedCond { text_embeds: second(&a.text_embeds), time_ids: second(&a.time_ids) });
            let r = p.model.forward_with_mode(
                &second(input),
                t,
                &second(hidden),
                &p.image,
                c.scale,
                true,
                added.as_ref(),
            )?;
            let pad = |x: Tensor| Tensor::cat(&[x.zeros_like(), x], 0);
            ControlResiduals { down: r.down.into_iter().map(pad).collect(), mid: pad(r.mid) }
        } else {
            p.model.forward_with_mode(input, t, hidden, &p.image, c.scale, c.guess_mode, added)?
        };
        sum = Some(match sum {
            None => r,
            Some(s) => {
                if s.down.len() != r.down.len() {
                    bail!(
                        "the ControlNets of this request have different layouts ({} and {} skips)",
                        s.down.len(),
                        r.down.len()
                    );
                }
                ControlResiduals { down: s.down.iter().zip(&r.down).map(|(a, b)| a + b).collect(), mid: s.mid + r.mid }
            }
        });
    }
    Ok(sum)
}

/// A1111 extension infotext for unit `index` (`ControlNet 0`, …).
pub fn infotext(index: usize, c: &ControlInput) -> (String, String) {
    let mut parts = vec![format!("Module: {}", c.preprocess.module()), format!("Model: {}", c.model)];
    parts.push(format!("Weight: {}", c.scale));
    parts.push(format!("Resize Mode: {}", c.resize.label()));
    if let Preprocess::Canny { low, high } = c.preprocess {
        parts.push(format!("Threshold A: {low}"));
        parts.push(format!("Threshold B: {high}"));
    }
    parts.push(format!("Guidance Start: {}", c.start));
    parts.push(format!("Guidance End: {}", c.end));
    let mode = if c.guess_mode { "ControlNet is more important" } else { "Balanced" };
    parts.push(format!("Control Mode: {mode}"));
    (format!("ControlNet {index}"), parts.join(", "))
}
