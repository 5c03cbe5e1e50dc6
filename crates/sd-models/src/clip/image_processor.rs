//! transformers' `CLIPImageProcessor` as the SD pipelines use it before the safety checker
//! (`feature_extractor/preprocessor_config.json`): resize the shortest side, center crop, rescale, normalise.
//!
//! The pipeline hands it 8-bit images (`numpy_to_pil` of `(x * 255).round()`), and transformers 5's default
//! torchvision backend resizes those uint8 tensors on the CPU with LibTorch's antialiased bicubic kernel, then
//! normalises in f32 with mean and std pre-multiplied by 1/rescale_factor. The same LibTorch ops are used
//! here, on the CPU, so the pixels match bit for bit.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResizeTo {
    ShortestEdge(i64),
    Exact { height: i64, width: i64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClipImageProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop: (i64, i64),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

/// OpenAI CLIP's normalisation constants (transformers `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl Default for ClipImageProcessor {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }
}

impl ClipImageProcessor {
    /// Parse `preprocessor_config.json`; absent fields take `CLIPImageProcessor`'s defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
        Self::from_json(&v).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let mut p = Self::default();
        let flag = |name: &str, default: bool| -> Result<bool> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(b) => b.as_bool().ok_or_else(|| anyhow!("field `{name}` must be true or false, found {b}")),
            }
        };
        p.do_resize = flag("do_resize", p.do_resize)?;
        p.do_center_crop = flag("do_center_crop", p.do_center_crop)?;
        p.do_rescale = flag("do_rescale", p.do_rescale)?;
        p.do_normalize = flag("do_normalize", p.do_normalize)?;
        if let Some(s) = v.get("size").filter(|s| !s.is_null()) {
            p.size = match (s.as_i64(), s.get("shortest_edge"), s.get("height"), s.get("width")) {
                (Some(n), ..) => ResizeTo::ShortestEdge(n),
                (None, Some(e), ..) => ResizeTo::ShortestEdge(positive(e, "size.shortest_edge")?),
                (None, None, Some(h), Some(w)) => {
                    ResizeTo::Exact { height: positive(h, "size.height")?, width: positive(w, "size.width")? }
                }
                _ => bail!(
                    "field `size` must be a number, {{\"shortest_edge\": n}} or {{\"height\", \"width\"}}, found {s}"
                ),
            };
        }
        if let Some(c) = v.get("crop_size").filter(|c| !c.is_null()) {
            p.crop = match (c.as_i64(), c.get("height"), c.get("width")) {
                (Some(n), ..) => (n, n),
                (None, Some(h), Some(w)) => (positive(h, "crop_size.height")?, positive(w, "crop_size.width")?),
                _ => bail!("field `crop_size` must be a number or {{\"height\", \"width\"}}, found {c}"),
            };
        }
        if let Some(r) = v.get("resample").filter(|r| !r.is_null()) {
            p.resample = match r.as_i64() {
                Some(2) => Resample::Bilinear,
                Some(3) => Resample::Bicubic,
                _ => bail!("field `resample` is {r}; supported: 2 (bilinear), 3 (bicubic)"),
            };
        }
        if let Some(f) = v.get("rescale_factor").filter(|f| !f.is_null()) {
            p.rescale_factor = f
                .as_f64()
                .filter(|f| *f > 0.0)
                .ok_or_else(|| anyhow!("field `rescale_factor` must be a positive number, found {f}"))?;
        }
        p.image_mean = triple(v, "image_mean", p.image_mean)?;
        p.image_std = triple(v, "image_std", p.image_std)?;
        if p.image_std.contains(&0.0) {
            bail!("field `image_std` contains 0");
        }
        Ok(p)
    }

    /// `images`: N × 3 × H × W in [0, 1] on any device. Returns N × 3 × crop_h × crop_w f32 pixels on the CPU.
    pub fn preprocess(&self, images: &Tensor) -> Result<Tensor> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] == 0 || size[3] == 0 {
            bail!("images must be N × 3 × H × W, found shape {size:?}");
        }
        let x = images.to_device(Device::Cpu).to_kind(Kind::Float).clamp(0.0, 1.0);
        // What numpy_to_pil does: (x * 255).round() as uint8.
        let mut x = (x * 255.0).round().to_kind(Kind::Uint8);
        if self.do_resize {
            let (h, w) = (size[2], size[3]);
            let (nh, nw) = match self.size {
                ResizeTo::Exact { height, width } => (height, width),
                // transformers get_resize_output_image_size: long side = int(short_target * long / short).
                ResizeTo::ShortestEdge(s) if h <= w => (s, (s as f64 * w as f64 / h as f64) as i64),
                ResizeTo::ShortestEdge(s) => ((s as f64 * h as f64 / w as f64) as i64, s),
            };
            if (nh, nw) != (h, w) {
                x = match self.resample {
                    Resample::Bicubic => x.f_internal_upsample_bicubic2d_aa([nh, nw], false, None, None),
                    Resample::Bilinear => x.f_internal_upsample_bilinear2d_aa([nh, nw], false, None, None),
                }
                .map_err(|e| anyhow!("resizing {h}×{w} to {nh}×{nw} failed: {e}"))?;
            }
        }
        if self.do_center_crop {
            x = center_crop(&x, self.crop.0, self.crop.1)?;
        }
        let x = x.to_kind(Kind::Float);
        Ok(match (self.do_rescale, self.do_normalize) {
            (true, true) => normalize(&x, &self.image_mean, &self.image_std, 1.0 / self.rescale_factor),
            (false, true) => normalize(&x, &self.image_mean, &self.image_std, 1.0),
            (true, false) => x * self.rescale_factor,
            (false, false) => x,
        })
    }
}

/// torchvision center crop: top = int((H - h) / 2), zero padding first when the image is smaller.
fn center_crop(x: &Tensor, ch: i64, cw: i64) -> Result<Tensor> {
    let (h, w) = (x.size()[2], x.size()[3]);
    let mut x = x.shallow_clone();
    if ch > h || cw > w {
        let (pw, ph) = ((cw - w).max(0), (ch - h).max(0));
        x = x
            .f_constant_pad_nd([pw / 2, (pw + 1) / 2, ph / 2, (ph + 1) / 2])
            .map_err(|e| anyhow!("padding for the center crop failed: {e}"))?;
    }
    let (h, w) = (x.size()[2], x.size()[3]);
    let top = ((h - ch) as f64 / 2.0) as i64;
    let left = ((w - cw) as f64 / 2.0) as i64;
    Ok(x.narrow(2, top, ch).narrow(3, left, cw))
}

/// (x - mean·scale) / (std·scale), the scale folded into f32 mean/std as transformers does.
fn normalize(x: &Tensor, mean: &[f32; 3], std: &[f32; 3], scale: f64) -> Tensor {
    let m = (Tensor::from_slice(mean) * scale).view([1, 3, 1, 1]);
    let s = (Tensor::from_slice(std) * scale).view([1, 3, 1, 1]);
    (x - m) / s
}

fn positive(v: &Value, name: &str) -> Result<i64> {
    v.as_i64().filter(|n| *n > 0).ok_or_else(|| anyhow!("field `{name}` must be a positive integer, found {v}"))
}

fn triple(v: &Value, name: &str, default: [f32; 3]) -> Result<[f32; 3]> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            n.as_f64().map(|f| [f as f32; 3]).ok_or_else(|| anyhow!("field `{name}` is not a number"))
        }
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| anyhow!("field `{name}` must hold numbers, found {x}"))? as f32;
            }
            Ok(out)
        }
        Some(other) => bail!("field `{name}` must be a number or a list of 3 numbers, found {other}"),
    }
}
