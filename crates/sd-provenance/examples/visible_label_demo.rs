//! Draws the default visible label on a gradient at a few sizes: `cargo run -p sd-provenance --example
//! visible_label_demo -- OUT_DIR` (to look at legibility).

use anyhow::{Context, Result};
use image::RgbImage;
use sd_provenance::visible_label::{draw_label, Corner, DEFAULT_TEXT};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: visible_label_demo OUT_DIR")?;
    std::fs::create_dir_all(&dir)?;
    for (w, h) in [(256u32, 256u32), (512, 512), (1024, 768)] {
        let mut img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 160]));
        let p = draw_label(&mut img, DEFAULT_TEXT, Corner::BottomRight)?;
        let path = format!("{dir}/label_{w}x{h}.png");
        img.save(&path)?;
        println!("{path}: {p:?}");
    }
    Ok(())
}
