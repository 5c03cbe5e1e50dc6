//! `procedural:shapes`: a synthetic captioned dataset for the `sd-tiny-shapes` demo model, and a deterministic
//! prompt-adherence checker that reads shape, colour and position back from pixel statistics.
//!
//! Every example is a flat background with one flat shape (circle, square or triangle) of another colour in one of
//! five places; the caption says all three, e.g. "a red circle on a blue background, top left". Example `i` is a
//! pure function of `i` (attributes by mixed-radix digits of a scrambled index, jitter from a seeded generator), so
//! the dataset is identical on every machine without any file.

use crate::dataset::{Crop, Dataset, Example};
use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use sd_core::TorchGenerator;

pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 30]),
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
];
pub const POSITIONS: [&str; 5] = ["top left", "top right", "bottom left", "bottom right", "center"];

/// What one image shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scene {
    pub shape: usize,
    pub colour: usize,
    pub background: usize,
    pub position: usize,
}

impl Scene {
    /// Scene `i` of the enumeration (3 shapes × 6 colours × 5 other backgrounds × 5 positions = 450 scenes).
    pub fn nth(i: u64) -> Self {
        let n = i % 450;
        let shape = (n % 3) as usize;
        let colour = ((n / 3) % 6) as usize;
        let bg_k = ((n / 18) % 5) as usize;
        let position = ((n / 90) % 5) as usize;
        let background = (colour + 1 + bg_k) % 6;
        Self { shape, colour, background, position }
    }

    pub fn caption(&self) -> String {
        format!(
            "a {} {} on a {} background, {}",
            COLOURS[self.colour].0, SHAPES[self.shape], COLOURS[self.background].0, POSITIONS[self.position]
        )
    }

    /// Draw at `size`×`size`; `jitter` moves the shape by up to size/16 and scales it by ±10 %.
    pub fn render(&self, size: u32, gen: Option<&mut TorchGenerator>) -> RgbImage {
        let s = size as f32;
        let (mut jx, mut jy, mut js) = (0.0, 0.0, 1.0);
        if let Some(g) = gen {
            let mut u = || (g.next_u32() % 10_000) as f32 / 10_000.0 - 0.5;
            jx = u() * s / 8.0;
            jy = u() * s / 8.0;
            js = 1.0 + u() * 0.2;
        }
        let (qx, qy) = match self.position {
            0 => (0.28, 0.28),
            1 => (0.72, 0.28),
            2 => (0.28, 0.72),
            3 => (0.72, 0.72),
            _ => (0.5, 0.5),
        };
        let (cx, cy, r) = (qx * s + jx, qy * s + jy, 0.2 * s * js);
        let fg = Rgb(COLOURS[self.colour].1);
        let bg = Rgb(COLOURS[self.background].1);
        let shape = self.shape;
        RgbImage::from_fn(size, size, |x, y| {
            let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match shape {
                0 => px * px + py * py <= r * r,
                1 => px.abs() <= r * 0.9 && py.abs() <= r * 0.9,
                // Upright isosceles triangle: apex at the top, base at the bottom of the box.
                _ => py >= -r && py <= r && px.abs() <= (py + r) / 2.0,
            };
            if inside {
                fg
            } else {
                bg
            }
        })
    }
}

/// The `procedural:shapes[:N]` dataset: `n` examples (default 400, every training scene once) at `size`×`size`.
pub fn dataset(spec: &str, size: u32, seed: u64) -> Result<Dataset> {
    let Some(rest) = spec.strip_prefix("procedural:shapes") else {
        bail!("unknown procedural dataset `{spec}`: expected procedural:shapes or procedural:shapes:N");
    };
    let n: u64 = match rest.strip_prefix(':') {
        Some(v) => {
            v.parse().map_err(|_| anyhow::anyhow!("`{spec}`: expected procedural:shapes or procedural:shapes:N"))?
        }
        None if rest.is_empty() => 400,
        None => bail!("unknown procedural dataset `{spec}`: expected procedural:shapes or procedural:shapes:N"),
    };
    if n == 0 {
        bail!("`{spec}` asks for an empty dataset");
    }
    let train = training_scenes();
    let mut gen = TorchGenerator::new(seed);
    let examples = (0..n)
        .map(|i| {
            let scene = Scene::nth(training_scene(i, &train));
            Example {
                source: format!("procedural:shapes #{i}"),
                caption: scene.caption(),
                image: scene.render(size, Some(&mut gen)),
            }
        })
        .collect();
    let mut ds = Dataset::from_examples(examples, None, Crop::Center)?;
    ds.record.dataset = spec.to_string();
    Ok(ds)
}

/// What the checker reads from an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub shape: usize,
    pub colour: usize,
    pub position: usize,
}

fn nearest_colour(c: [f32; 3]) -> usize {
    let d = |p: [u8; 3]| (0..3).map(|k| (c[k] - p[k] as f32).powi(2)).sum::<f32>();
    (0..COLOURS.len()).min_by(|&a, &b| d(COLOURS[a].1).total_cmp(&d(COLOURS[b].1))).unwrap_or(0)
}

/// Read shape, colour and position: the background colour is the per-channel median of the border pixels;
/// foreground pixels are those farther than a fixed distance from it (robust to the soft, textured backgrounds a
/// small model generates); the colour is the majority palette colour among them (the background's own palette
/// colour excluded), the position their bounding box's quadrant (or centre), and the shape the fill ratio of that
/// box (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2). `None` when no foreground is found.
pub fn read(img: &RgbImage) -> Option<Reading> {
    let (w, h) = img.dimensions();
    let px = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        [p[0] as f32, p[1] as f32, p[2] as f32]
    };
    let mut border: Vec<[f32; 3]> = Vec::new();
    for x in 0..w {
        border.push(px(x, 0));
        border.push(px(x, h - 1));
    }
    for y in 1..h.saturating_sub(1) {
        border.push(px(0, y));
        border.push(px(w - 1, y));
    }
    let mut bg = [0f32; 3];
    for (k, slot) in bg.iter_mut().enumerate() {
        let mut ch: Vec<f32> = border.iter().map(|p| p[k]).collect();
        ch.sort_by(f32::total_cmp);
        *slot = ch[ch.len() / 2];
    }
    let bg_palette = nearest_colour(bg);
    let (mut votes, mut n) = ([0u32; 6], 0u32);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let p = px(x, y);
            let d2: f32 = (0..3).map(|k| (p[k] - bg[k]).powi(2)).sum();
            if d2 > 80.0 * 80.0 {
                let c = nearest_colour(p);
                if c != bg_palette {
                    votes[c] += 1;
                }
                n += 1;
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    if n < 4 {
        return None;
    }
    let colour = (0..6).max_by_key(|&i| votes[i])?;
    // The bounding box's centre, not the centroid: a triangle's centroid sits a third of the way up from its base.
    let (cx, cy) = ((x0 + x1 + 1) as f64 / 2.0 / w as f64, (y0 + y1 + 1) as f64 / 2.0 / h as f64);
    let position = if (cx - 0.5).abs() < 0.12 && (cy - 0.5).abs() < 0.12 {
        4
    } else {
        match (cx >= 0.5, cy >= 0.5) {
            (false, false) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (true, true) => 3,
        }
    };
    let fill = n as f64 / (((x1 - x0 + 1) * (y1 - y0 + 1)) as f64);
    let shape = if fill > 0.89 {
        1
    } else if fill > 0.64 {
        0
    } else {
        2
    };
    Some(Reading { shape, colour, position })
}

/// The 450 scene indices in a fixed pseudo-random order; the first 50 are held out of training, so every
/// attribute (shape, colour, background, position) appears among them in roughly its overall proportion, while
/// each held-out combination is never trained on.
fn scene_order() -> Vec<u64> {
    let mut order: Vec<u64> = (0..450).collect();
    let mut gen = TorchGenerator::new(0x5EED_5BA9);
    for i in (1..order.len()).rev() {
        let j = (gen.next_u32() as usize) % (i + 1);
        order.swap(i, j);
    }
    order
}

/// The 50 held-out evaluation scenes.
pub fn held_out_scenes() -> Vec<Scene> {
    scene_order()[..50].iter().map(|&n| Scene::nth(n)).collect()
}

/// 50 training scenes (the 50 after the held-out ones in the fixed shuffled order) for choosing sampling settings
/// such as the guidance scale: they are drawn with other seeds than any evaluation uses, and choosing on them
/// leaves the held-out prompts untouched until the one score they give.
pub fn validation_scenes() -> Vec<Scene> {
    scene_order()[50..100].iter().map(|&n| Scene::nth(n)).collect()
}

/// The distinct captions the training set uses (the 400 scenes not held out), in scene order: written next to
/// the demo model so anyone can check that no held-out prompt was trained on as such.
pub fn training_captions() -> Vec<String> {
    training_scenes().into_iter().map(|n| Scene::nth(n).caption()).collect()
}

/// The 400 scene indices not held out, in index order.
fn training_scenes() -> Vec<u64> {
    let mut train: Vec<u64> = scene_order()[50..].to_vec();
    train.sort_unstable();
    train
}

/// Scene index of training example `i`: the 400 other scenes in index order, cycled.
fn training_scene(i: u64, train: &[u64]) -> u64 {
    train[(i % train.len() as u64) as usize]
}
