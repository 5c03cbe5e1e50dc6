//! Images in and out: decoding user files with clear errors, RGB8 ↔ NCHW tensors, resizing with a named filter,
//! (PNG files with text chunks are written by sd-provenance's `metadata::encode_png` and `atomic::write_atomic`.)

use anyhow::{anyhow, bail, Context, Result};
use image::{imageops::FilterType, DynamicImage, RgbImage};
use std::path::Path;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// Largest side we accept when decoding (a 32k-pixel PNG header is more likely an attack than a photo);
/// see [`crate::limits::IMAGE_MAX_SIDE`].
pub const MAX_SIDE: u32 = crate::limits::IMAGE_MAX_SIDE as u32;

/// Decode a PNG/JPEG/WebP file to 8-bit RGB (alpha is dropped, greyscale expanded).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decode image bytes to RGB8, refusing unknown formats and absurd dimensions before allocating.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let format =
        image::guess_format(bytes).map_err(|_| anyhow!("not a recognised image (expected PNG, JPEG or WebP)"))?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(crate::limits::IMAGE_MAX_ALLOC_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| anyhow!("{format:?} data is invalid or truncated: {e}"))?;
    Ok(img.to_rgb8())
}

/// Decode a single-channel mask (white = 255). Colour masks are converted to luma.
pub fn load_luma(path: &Path) -> Result<image::GrayImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let rgb = decode_rgb(&bytes).with_context(|| format!("cannot decode image {}", path.display()))?;
    Ok(DynamicImage::ImageRgb8(rgb).to_luma8())
}

/// Resampling filters by the names users know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl FromStr for Filter {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "nearest" => Self::Nearest,
            "bilinear" | "triangle" => Self::Bilinear,
            "bicubic" | "catmullrom" => Self::Bicubic,
            "lanczos" | "lanczos3" => Self::Lanczos,
            other => bail!("unknown resize filter `{other}`: expected nearest, bilinear, bicubic or lanczos"),
        })
    }
}

impl Filter {
    fn to_image(self) -> FilterType {
        match self {
            Self::Nearest => FilterType::Nearest,
            Self::Bilinear => FilterType::Triangle,
            Self::Bicubic => FilterType::CatmullRom,
            Self::Lanczos => FilterType::Lanczos3,
        }
    }
}

/// Resize to exactly `width`×`height`.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    if img.width() == width && img.height() == height {
        return img.clone();
    }
    if filter == Filter::Lanczos {
        // Pillow's exact bytes; the buffer sizes are consistent by construction, so the fallback never runs.
        if let Ok(out) = crate::resample::lanczos_rgb(img, width, height) {
            return out;
        }
    }
    image::imageops::resize(img, width, height, filter.to_image())
}

/// Value range of an image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// [0, 1]
    Unit,
    /// [-1, 1], what the VAE encoder expects
    Signed,
}

/// RGB8 image → `[1, 3, H, W]` float tensor in `range`.
pub fn rgb_to_tensor(img: &RgbImage, range: Range, kind: Kind, device: Device) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let t = Tensor::from_slice(img.as_raw()).reshape([h, w, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float)
        / 255.0;
    let t = match range {
        Range::Unit => t,
        Range::Signed => t * 2.0 - 1.0,
    };
    t.to_kind(kind).to_device(device)
}

/// `[3, H, W]` or `[1, 3, H, W]` float tensor in `range` → RGB8, clamped and rounded as diffusers does
/// (`(x / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()`).
pub fn tensor_to_rgb(t: &Tensor, range: Range) -> Result<RgbImage> {
    let t = if t.dim() == 4 {
        if t.size()[0] != 1 {
            bail!("expected one image, got a batch of {}", t.size()[0]);
        }
        t.squeeze_dim(0)
    } else {
        t.shallow_clone()
    };
    let size = t.size();
    if size.len() != 3 || size[0] != 3 {
        bail!("expected an image tensor of shape [3, H, W], got {size:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float);
    let t = match range {
        Range::Unit => t,
        Range::Signed => t / 2.0 + 0.5,
    };
    let t = (t.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let (h, w) = (size[1] as u32, size[2] as u32);
    let mut buf = vec![0u8; (h * w * 3) as usize];
    let n = buf.len();
    t.f_copy_data_u8(&mut buf, n)?;
    RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("image buffer size mismatch"))
}
