//! Canny edge maps computed the way OpenCV's `cv2.Canny(image, low, high)` computes them (what the A1111 ControlNet
//! extension's `canny` module runs, and what Canny ControlNets were trained on), so maps made here match maps made
//! there: no Gaussian pre-blur (imageproc's own `canny` blurs with σ = 1.4, which would thin out fine edges), 3×3
//! Sobel derivatives with replicated borders (imageproc's), the L1 magnitude `|dx| + |dy|`, and on colour input the
//! channel with the largest magnitude per pixel (the first on ties). Non-maximum suppression bins the gradient
//! direction with OpenCV's fixed-point tan 22.5° test, breaking ties toward the left/upper neighbour as it does;
//! thresholds are floored; hysteresis follows 8-connected neighbours from pixels above `high`.

use anyhow::{bail, Result};
use image::{GrayImage, Luma, RgbImage};
use imageproc::gradients::{horizontal_sobel, vertical_sobel};

/// Largest picture side accepted (a map's work and memory grow with the area).
pub const MAX_SIDE: u32 = 8192;

/// Edges of an RGB picture as a white-on-black RGB map (the three channels equal, as the extension's `HWC3`).
pub fn canny_rgb(img: &RgbImage, low: f64, high: f64) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        bail!("Canny needs a picture between 1 and {MAX_SIDE} pixels a side (got {w}x{h})");
    }
    let channels: Vec<GrayImage> =
        (0..3).map(|c| GrayImage::from_fn(w, h, |x, y| Luma([img.get_pixel(x, y).0[c]]))).collect();
    let edges = canny_channels(&channels, low, high);
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let v = edges.get_pixel(x, y).0[0];
        image::Rgb([v, v, v])
    }))
}

/// Edges of one or more same-sized channels (255 = edge).
pub fn canny_channels(channels: &[GrayImage], low: f64, high: f64) -> GrayImage {
    let (w, h) = channels[0].dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (low.floor() as i32, high.floor() as i32);
    // Per pixel: the derivatives and L1 magnitude of the channel with the largest magnitude.
    let mut dx = vec![0i32; wu * hu];
    let mut dy = vec![0i32; wu * hu];
    let mut mag = vec![0i32; wu * hu];
    for (c, ch) in channels.iter().enumerate() {
        let gx = horizontal_sobel(ch);
        let gy = vertical_sobel(ch);
        for (i, (px, py)) in gx.pixels().zip(gy.pixels()).enumerate() {
            let (a, b) = (px.0[0] as i32, py.0[0] as i32);
            let m = a.abs() + b.abs();
            if c == 0 || m > mag[i] {
                mag[i] = m;
                dx[i] = a;
                dy[i] = b;
            }
        }
    }
    let at = |x: i64, y: i64| -> i32 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0
        } else {
            mag[y as usize * wu + x as usize]
        }
    };
    // 2 = edge, 1 = candidate (passed suppression and `low`), 0 = nothing.
    const TAN22: i64 = 13573; // round(tan(22.5°) · 2^15)
    let mut state = vec![0u8; wu * hu];
    let mut stack = Vec::new();
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let i = y as usize * wu + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (gx, gy) = (dx[i] as i64, dy[i] as i64);
            let ax = gx.abs();
            let ay = gy.abs() << 15;
            let tg22 = ax * TAN22;
            let keep = if ay < tg22 {
                m > at(x - 1, y) && m >= at(x + 1, y)
            } else if ay > tg22 + (ax << 16) {
                m > at(x, y - 1) && m >= at(x, y + 1)
            } else {
                let s = if (gx ^ gy) < 0 { -1 } else { 1 };
                m > at(x - s, y - 1) && m > at(x + s, y + 1)
            };
            if keep {
                if m > high {
                    state[i] = 2;
                    stack.push(i);
                } else {
                    state[i] = 1;
                }
            }
        }
    }
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % wu) as i64, (i / wu) as i64);
        for (ox, oy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
            let (nx, ny) = (x + ox, y + oy);
            if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                continue;
            }
            let j = ny as usize * wu + nx as usize;
            if state[j] == 1 {
                state[j] = 2;
                stack.push(j);
            }
        }
    }
    GrayImage::from_fn(w, h, |x, y| Luma([if state[y as usize * wu + x as usize] == 2 { 255 } else { 0 }]))
}
