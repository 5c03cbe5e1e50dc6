//! The explicit (visible) label GB 45438-2025 asks for when AI images are shown to the public: short text in a
//! corner, white on a dark translucent box, sized from the image so it stays legible from thumbnails to posters.
//!
//! Only the glyphs embedded in [`glyphs`] exist (printable ASCII plus 生 and 成, enough for the default
//! "AI生成 / AI-generated"); any other character is an error naming it — no silent tofu. Draw the label before
//! the invisible watermark so the mark covers the final pixels.

#[rustfmt::skip]
pub mod glyphs;

use anyhow::{bail, Result};
use glyphs::{Glyph, CELL_H, GLYPHS};
use image::RgbImage;

pub const DEFAULT_TEXT: &str = "AI生成 / AI-generated";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    #[default]
    BottomRight,
}

/// Where the label box landed, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Height of the text itself.
    pub text_height: u32,
}

fn glyph(c: char) -> Option<&'static Glyph> {
    GLYPHS.iter().find(|g| g.ch == c)
}

/// The glyphs for `text`, or an error listing the characters the built-in font lacks.
pub fn glyphs_for(text: &str) -> Result<Vec<&'static Glyph>> {
    let missing: Vec<char> = text.chars().filter(|&c| glyph(c).is_none()).collect();
    if !missing.is_empty() {
        let list: String = missing.iter().map(|c| format!("{c:?} ")).collect();
        bail!(
            "the visible label supports printable ASCII plus 生 and 成 only; unsupported characters: {}",
            list.trim_end()
        );
    }
    if text.trim().is_empty() {
        bail!("the visible label text is empty");
    }
    Ok(text.chars().filter_map(glyph).collect())
}

fn ink(g: &Glyph, gx: f32, gy: f32) -> bool {
    let (x, y) = (gx as isize, gy as isize);
    if x < 0 || y < 0 || x as usize >= g.width || y as usize >= CELL_H {
        return false;
    }
    (g.rows[y as usize] >> (g.width - 1 - x as usize)) & 1 == 1
}

/// Draws `text` into a corner of `img`. Text height is ~3.5 % of the shorter side (at least 12 px), shrunk if the
/// label would be wider than 90 % of the image; images too small for a 6 px label are an error.
pub fn draw_label(img: &mut RgbImage, text: &str, corner: Corner) -> Result<Placement> {
    let gs = glyphs_for(text)?;
    let (w, h) = img.dimensions();
    let cells_w: usize = gs.iter().map(|g| g.width).sum();
    let mut th = ((w.min(h) as f32) * 0.035).round().max(12.0);
    let scale_for = |th: f32| th / CELL_H as f32;
    let pad = |th: f32| (th * 0.35).round().max(2.0);
    let box_w = |th: f32| cells_w as f32 * scale_for(th) + 2.0 * pad(th);
    if box_w(th) > w as f32 * 0.9 {
        th = ((w as f32 * 0.9) / (cells_w as f32 / CELL_H as f32 + 0.7)).floor();
    }
    if th < 6.0 || th + 2.0 * pad(th) > h as f32 {
        bail!("image {w}x{h} is too small for a legible visible label \"{text}\"");
    }
    let s = scale_for(th);
    let (bw, bh) = (box_w(th).ceil() as u32, (th + 2.0 * pad(th)).ceil() as u32);
    let margin = (th * 0.5).round() as u32;
    let bx = match corner {
        Corner::TopLeft | Corner::BottomLeft => margin.min(w - bw),
        _ => w.saturating_sub(bw + margin),
    };
    let by = match corner {
        Corner::TopLeft | Corner::TopRight => margin.min(h - bh),
        _ => h.saturating_sub(bh + margin),
    };
    let p = pad(th);
    // 4×4 supersampling of the 1-bit glyphs gives smooth edges at any scale
    const SS: usize = 4;
    for py in 0..bh {
        for px in 0..bw {
            let (x, y) = (bx + px, by + py);
            if x >= w || y >= h {
                continue;
            }
            let mut cover = 0usize;
            for sy in 0..SS {
                for sx in 0..SS {
                    let fx = (px as f32 + (sx as f32 + 0.5) / SS as f32 - p) / s;
                    let fy = (py as f32 + (sy as f32 + 0.5) / SS as f32 - p) / s;
                    if fy < 0.0 || fx < 0.0 {
                        continue;
                    }
                    let mut left = 0f32;
                    for g in &gs {
                        if fx < left + g.width as f32 {
                            cover += ink(g, fx - left, fy) as usize;
                            break;
                        }
                        left += g.width as f32;
                    }
                }
            }
            let a = cover as f32 / (SS * SS) as f32;
            let px_ref = img.get_pixel_mut(x, y);
            for c in px_ref.0.iter_mut() {
                let bg = *c as f32 * 0.35; // dark translucent box: 65 % black
                *c = (bg * (1.0 - a) + 255.0 * a).round() as u8;
            }
        }
    }
    Ok(Placement { x: bx, y: by, width: bw, height: bh, text_height: th as u32 })
}
