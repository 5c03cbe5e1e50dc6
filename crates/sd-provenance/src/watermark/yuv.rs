//! OpenCV's BGR↔YUV conversions exactly as `cv2.cvtColor(.., COLOR_BGR2YUV / COLOR_YUV2BGR)` computes them.
//!
//! The uint8 path is OpenCV's 14-bit fixed-point arithmetic (`RGB2YUV_i` / `YUV2RGB_i` in
//! `modules/imgproc/src/color_yuv.simd.hpp`); it was checked against opencv-python-headless 5.0.0.93 on all 2^24
//! inputs in both directions. The float path uses OpenCV's float coefficients with chroma offset 0.5 (OpenCV's
//! "half" for float images) even though the SDXL watermarker feeds values on a 0..255 scale.

const SHIFT: i32 = 14;
const ROUND: i32 = 1 << (SHIFT - 1);
const DELTA_FIXED: i32 = 128 << SHIFT;

#[inline]
fn descale(x: i32) -> i32 {
    (x + ROUND) >> SHIFT
}

#[inline]
fn sat_u8(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// uint8 BGR → YUV, the order OpenCV stores them (Y, U, V).
#[inline]
pub fn bgr_to_yuv_u8(b: u8, g: u8, r: u8) -> [u8; 3] {
    let (b, g, r) = (b as i32, g as i32, r as i32);
    let y = descale(b * 1868 + g * 9617 + r * 4899);
    let u = descale((b - y) * 8061 + DELTA_FIXED);
    let v = descale((r - y) * 14369 + DELTA_FIXED);
    [sat_u8(y), sat_u8(u), sat_u8(v)]
}

/// uint8 YUV → BGR.
#[inline]
pub fn yuv_to_bgr_u8(y: u8, u: u8, v: u8) -> [u8; 3] {
    let (y, u, v) = (y as i32, u as i32 - 128, v as i32 - 128);
    let b = y + descale(u * 33292);
    let g = y + descale(v * -9519 + u * -6472);
    let r = y + descale(v * 18678);
    [sat_u8(b), sat_u8(g), sat_u8(r)]
}

/// float BGR → YUV (values on any scale; chroma offset 0.5 as OpenCV uses for float images).
#[inline]
pub fn bgr_to_yuv_f32(b: f32, g: f32, r: f32) -> [f32; 3] {
    let y = b * 0.114 + g * 0.587 + r * 0.299;
    let u = (b - y) * 0.492 + 0.5;
    let v = (r - y) * 0.877 + 0.5;
    [y, u, v]
}

/// float YUV → BGR.
#[inline]
pub fn yuv_to_bgr_f32(y: f32, u: f32, v: f32) -> [f32; 3] {
    let (u, v) = (u - 0.5, v - 0.5);
    let b = y + u * 2.032;
    let g = y + v * -0.581 + u * -0.395;
    let r = y + v * 1.140;
    [b, g, r]
}
