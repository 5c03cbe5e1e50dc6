//! Lanczos resampling that gives Pillow's `Image.resize(..., Image.LANCZOS)` bytes exactly. diffusers'
//! `VaeImageProcessor` and AUTOMATIC1111 resize init images, masks and hires-fix enlargements with Pillow, so an
//! img2img from a resized picture only matches them when the resize does: Pillow filters in two separable passes
//! (horizontal, then vertical) with fixed-point coefficients and rounds to 8 bits between the passes, which a
//! floating-point Lanczos (the `image` crate's) does not, differing by up to ~13 levels at edges.

use anyhow::{bail, Result};

/// Fractional bits of the fixed-point coefficients: 32 bits minus 8 for the pixel value and 2 of headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Lanczos-3 support, in source pixels at scale 1.
const SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

/// Per output pixel: first source index, tap count, and the fixed-point weights (`ksize` per pixel).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Truncation toward zero after +0.5, as the C code rounds.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = lanczos((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resize interleaved 8-bit pixels (`channels` per pixel, row-major) from `w`×`h` to `out_w`×`out_h`.
pub fn lanczos_u8(src: &[u8], w: usize, h: usize, channels: usize, out_w: usize, out_h: usize) -> Result<Vec<u8>> {
    if src.len() != w * h * channels || w == 0 || h == 0 || out_w == 0 || out_h == 0 || channels == 0 {
        bail!("cannot resize a {w}x{h}x{channels} buffer of {} bytes to {out_w}x{out_h}", src.len());
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass (only if the width changes), rounded to 8 bits as Pillow stores its intermediate image.
    let (tmp, tw) = if out_w != w {
        let c = coeffs(w, out_w);
        let mut out = vec![0u8; out_w * h * channels];
        for y in 0..h {
            let row = &src[y * w * channels..(y + 1) * w * channels];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..channels {
                    let mut ss = half;
                    for (x, &kx) in k.iter().enumerate() {
                        ss += i64::from(row[(xmin + x) * channels + ch]) * i64::from(kx);
                    }
                    out[(y * out_w + xx) * channels + ch] = clip8(ss);
                }
            }
        }
        (out, out_w)
    } else {
        (src.to_vec(), w)
    };
    if out_h == h {
        return Ok(tmp);
    }
    let c = coeffs(h, out_h);
    let mut out = vec![0u8; tw * out_h * channels];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for x in 0..tw {
            for ch in 0..channels {
                let mut ss = half;
                for (y, &ky) in k.iter().enumerate() {
                    ss += i64::from(tmp[((ymin + y) * tw + x) * channels + ch]) * i64::from(ky);
                }
                out[(yy * tw + x) * channels + ch] = clip8(ss);
            }
        }
    }
    Ok(out)
}

/// [`lanczos_u8`] on an RGB image.
pub fn lanczos_rgb(img: &image::RgbImage, out_w: u32, out_h: u32) -> Result<image::RgbImage> {
    let px = lanczos_u8(img.as_raw(), img.width() as usize, img.height() as usize, 3, out_w as usize, out_h as usize)?;
    image::RgbImage::from_raw(out_w, out_h, px).ok_or_else(|| anyhow::anyhow!("resized buffer has the wrong size"))
}

/// [`lanczos_u8`] on a single-channel image (masks).
pub fn lanczos_luma(img: &image::GrayImage, out_w: u32, out_h: u32) -> Result<image::GrayImage> {
    let px = lanczos_u8(img.as_raw(), img.width() as usize, img.height() as usize, 1, out_w as usize, out_h as usize)?;
    image::GrayImage::from_raw(out_w, out_h, px).ok_or_else(|| anyhow::anyhow!("resized buffer has the wrong size"))
}
