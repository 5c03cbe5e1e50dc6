//! Invisible watermark, bit-compatible with PyPI `invisible-watermark` 0.2.0, methods "dwtDct" (Stable
//! Diffusion's own) and "dwtDctSvd" (the one that survives JPEG and resizing; see [`Method`]).
//!
//! Pipeline (as the package does it): BGR → YUV (OpenCV), one-level Haar transform of the U plane cropped to a
//! multiple of 4 on both sides, block rule of `maxdct` on the LL band, inverse Haar called with the two detail
//! bands swapped (a quirk of the package: it transposes each 2×2 pixel block of U's detail), U written back, whole
//! image YUV → BGR. On the uint8 path the float U is stored into uint8 by truncation with wrap-around (numpy's
//! cast), so values just below 0 become ~255: the package does that and so do we.
//!
//! dwtDct is weak: JPEG, resizing or cropping erase it. dwtDctSvd (`dctsvd`) shares the whole pipeline and
//! only swaps the block rule; it survives JPEG at usual qualities and halving (README: robustness table). Anyone
//! can add or remove either: a courtesy signal, not proof.

mod confidence;
mod dctsvd;
mod haar;
mod maxdct;
mod payload;
mod sample;
pub mod yuv;

pub use confidence::{binomial_tail, classify, thresholds, Confidence};
pub use payload::{bytes_to_bits, Payload, SDXL_MESSAGE, SD_V1_BYTES};

use anyhow::{bail, Result};
use image::RgbImage;
use rayon::prelude::*;
use sample::Sample;
use serde::{Deserialize, Serialize};

/// The package refuses images with fewer pixels than this (`r*c < 256*256`).
pub const MIN_PIXELS: u64 = 256 * 256;

/// The block rule, named as the reference package names its methods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// Quantises the largest AC coefficient of each 4×4 LL block; what Stable Diffusion's scripts and diffusers use.
    #[default]
    #[serde(rename = "dwtDct")]
    DwtDct,
    /// Quantises the largest singular value of each block's DCT; survives JPEG and resizing.
    #[serde(rename = "dwtDctSvd")]
    DwtDctSvd,
}

impl Method {
    pub const ALL: [Method; 2] = [Method::DwtDct, Method::DwtDctSvd];

    pub fn name(self) -> &'static str {
        match self {
            Method::DwtDct => "dwtDct",
            Method::DwtDctSvd => "dwtDctSvd",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dwtDct" => Ok(Method::DwtDct),
            "dwtDctSvd" => Ok(Method::DwtDctSvd),
            _ => bail!("unknown watermark method {s:?}: expected dwtDct or dwtDctSvd"),
        }
    }
}

/// What [`embed`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WatermarkOutcome {
    Applied {
        payload: String,
        bits: usize,
        #[serde(default)]
        method: Method,
    },
    /// Not applied because the image is too small for the reference algorithm (it refuses < 256×256 pixels).
    NotAppliedTooSmall { width: u32, height: u32 },
    /// The user turned it off (`--no-watermark`).
    Disabled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub payload: String,
    #[serde(default)]
    pub method: Method,
    pub matched_bits: u32,
    pub total_bits: u32,
    pub confidence: Confidence,
    /// The decoded bits, most significant first.
    pub bits: Vec<bool>,
}

fn too_small(w: u32, h: u32) -> bool {
    (w as u64) * (h as u64) < MIN_PIXELS
}

/// Runs the U-plane transform: `u` is the full-size plane (row-major, width `w`), modified in place on the
/// cropped region. `store` maps the reconstructed float to the plane's element type.
fn mark_plane<T: Sample>(u: &[T], w: usize, h: usize, bits: &[bool]) -> Vec<T> {
    let (ch, cw) = (h / 4 * 4, w / 4 * 4);
    let crop: Vec<T> = (0..ch).flat_map(|i| u[i * w..i * w + cw].iter().copied()).collect();
    let mut b = haar::dwt2(&crop, ch, cw);
    maxdct::encode_band(&mut b.aa, b.h, b.w, bits);
    std::mem::swap(&mut b.ad, &mut b.da);
    haar::idwt2(&b)
}

/// The uint8 path of either method (float64 throughout, as pywt promotes uint8).
fn mark_plane_f64(u: &[f64], w: usize, h: usize, bits: &[bool], method: Method) -> Vec<f64> {
    if method == Method::DwtDct {
        return mark_plane(u, w, h, bits);
    }
    let (ch, cw) = (h / 4 * 4, w / 4 * 4);
    let crop: Vec<f64> = (0..ch).flat_map(|i| u[i * w..i * w + cw].iter().copied()).collect();
    let mut b = haar::dwt2(&crop, ch, cw);
    dctsvd::encode_band(&mut b.aa, b.h, b.w, bits);
    std::mem::swap(&mut b.ad, &mut b.da);
    haar::idwt2(&b)
}

fn decode_plane(u: &[f64], w: usize, h: usize, len: usize, method: Method) -> Vec<bool> {
    let (ch, cw) = (h / 4 * 4, w / 4 * 4);
    let crop: Vec<f64> = (0..ch).flat_map(|i| u[i * w..i * w + cw].iter().copied()).collect();
    let b = haar::dwt2(&crop, ch, cw);
    let votes = match method {
        Method::DwtDct => maxdct::decode_band(&b.aa, b.h, b.w, len),
        Method::DwtDctSvd => dctsvd::decode_band(&b.aa, b.h, b.w, len),
    };
    votes.into_iter().map(|(ones, n)| (ones as f64 / n as f64) * 255.0 > 127.0).collect()
}

/// Embeds `payload` with dwtDct (see [`embed_with`]).
pub fn embed(img: &mut RgbImage, payload: &Payload) -> Result<WatermarkOutcome> {
    embed_with(img, payload, Method::DwtDct)
}

/// Embeds `payload` into an 8-bit RGB image in place, exactly as
/// `WatermarkEncoder().encode(bgr, method)` does on the BGR view of it.
pub fn embed_with(img: &mut RgbImage, payload: &Payload, method: Method) -> Result<WatermarkOutcome> {
    let (w, h) = img.dimensions();
    if too_small(w, h) {
        return Ok(WatermarkOutcome::NotAppliedTooSmall { width: w, height: h });
    }
    let bits = payload.bits();
    if bits.is_empty() {
        bail!("watermark payload is empty");
    }
    let (wu, hu) = (w as usize, h as usize);
    let raw: &mut [u8] = &mut *img;
    let mut yuv: Vec<[u8; 3]> = raw.par_chunks(3).map(|p| yuv::bgr_to_yuv_u8(p[2], p[1], p[0])).collect();
    let u: Vec<f64> = yuv.iter().map(|p| p[1] as f64).collect();
    let rec = mark_plane_f64(&u, wu, hu, &bits, method);
    let cw = wu / 4 * 4;
    yuv.par_chunks_mut(wu).take(hu / 4 * 4).enumerate().for_each(|(i, row)| {
        for (j, px) in row.iter_mut().take(cw).enumerate() {
            // numpy float64 → uint8: truncate toward zero, then wrap modulo 256
            px[1] = (rec[i * cw + j] as i64) as u8;
        }
    });
    raw.par_chunks_mut(3).zip(yuv.par_iter()).for_each(|(p, q)| {
        let [b, g, r] = yuv::yuv_to_bgr_u8(q[0], q[1], q[2]);
        p.copy_from_slice(&[r, g, b]);
    });
    Ok(WatermarkOutcome::Applied { payload: payload.name(), bits: bits.len(), method })
}

/// The float path diffusers' `StableDiffusionXLWatermarker` uses: `rgb` is height×width×3 RGB f32 on a 0..255
/// scale (diffusers passes `255 * (x / 2 + 0.5)`), computed in f32 like numpy/pywt/OpenCV do on float32 input.
/// Values are not clamped; diffusers clamps after mapping back to [-1, 1].
pub fn embed_float_rgb(rgb: &mut [f32], width: u32, height: u32, payload: &Payload) -> Result<WatermarkOutcome> {
    let (wu, hu) = (width as usize, height as usize);
    if rgb.len() != wu * hu * 3 {
        bail!("float image buffer has {} values, expected {}×{}×3 = {}", rgb.len(), height, width, wu * hu * 3);
    }
    if too_small(width, height) {
        return Ok(WatermarkOutcome::NotAppliedTooSmall { width, height });
    }
    let bits = payload.bits();
    if bits.is_empty() {
        bail!("watermark payload is empty");
    }
    let mut yuv: Vec<[f32; 3]> = rgb.par_chunks(3).map(|p| yuv::bgr_to_yuv_f32(p[2], p[1], p[0])).collect();
    let u: Vec<f32> = yuv.iter().map(|p| p[1]).collect();
    let rec = mark_plane(&u, wu, hu, &bits);
    let cw = wu / 4 * 4;
    yuv.par_chunks_mut(wu).take(hu / 4 * 4).enumerate().for_each(|(i, row)| {
        for (j, px) in row.iter_mut().take(cw).enumerate() {
            px[1] = rec[i * cw + j];
        }
    });
    rgb.par_chunks_mut(3).zip(yuv.par_iter()).for_each(|(p, q)| {
        let [b, g, r] = yuv::yuv_to_bgr_f32(q[0], q[1], q[2]);
        p.copy_from_slice(&[r, g, b]);
    });
    Ok(WatermarkOutcome::Applied { payload: payload.name(), bits: bits.len(), method: Method::DwtDct })
}

/// Decodes `len` dwtDct bits (see [`decode_bits_with`]).
pub fn decode_bits(img: &RgbImage, len: usize) -> Option<Vec<bool>> {
    decode_bits_with(img, len, Method::DwtDct)
}

/// Decodes `len` bits exactly as `WatermarkDecoder('bits', len).decode(bgr, method)`. Images smaller than
/// 256×256 pixels return `None` (the reference refuses them).
pub fn decode_bits_with(img: &RgbImage, len: usize, method: Method) -> Option<Vec<bool>> {
    let (w, h) = img.dimensions();
    if too_small(w, h) || len == 0 {
        return None;
    }
    let raw: &[u8] = img;
    let u: Vec<f64> = raw.par_chunks(3).map(|p| yuv::bgr_to_yuv_u8(p[2], p[1], p[0])[1] as f64).collect();
    Some(decode_plane(&u, w as usize, h as usize, len, method))
}

/// Decodes with dwtDct and compares with `payload` (see [`detect_with`]).
pub fn detect(img: &RgbImage, payload: &Payload) -> Option<Detection> {
    detect_with(img, payload, Method::DwtDct)
}

/// Decodes with `method` and compares with `payload`. `None` when the image is too small to carry a mark.
pub fn detect_with(img: &RgbImage, payload: &Payload, method: Method) -> Option<Detection> {
    let want = payload.bits();
    let got = decode_bits_with(img, want.len(), method)?;
    let matched = want.iter().zip(&got).filter(|(a, b)| a == b).count() as u32;
    let total = want.len() as u32;
    Some(Detection {
        payload: payload.name(),
        method,
        matched_bits: matched,
        total_bits: total,
        confidence: classify(matched, total),
        bits: got,
    })
}
