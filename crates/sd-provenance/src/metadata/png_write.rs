//! PNG encoding with text chunks before IDAT: the one PNG writer of sd-rs, here (without LibTorch) so the
//! pipeline, training previews and this crate's own tools share it.

use super::TextChunk;
use anyhow::{anyhow, Context, Result};
use image::RgbImage;

pub fn encode_png(img: &RgbImage, chunks: &[TextChunk]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for c in chunks {
            if !c.force_itxt && c.text.is_ascii() {
                enc.add_text_chunk(c.keyword.clone(), c.text.clone())
                    .map_err(|e| anyhow!("cannot add tEXt chunk `{}`: {e}", c.keyword))?;
            } else {
                enc.add_itxt_chunk(c.keyword.clone(), c.text.clone())
                    .map_err(|e| anyhow!("cannot add iTXt chunk `{}`: {e}", c.keyword))?;
            }
        }
        let mut writer = enc.write_header().context("cannot write PNG header")?;
        writer.write_image_data(img.as_raw()).context("cannot write PNG data")?;
        writer.finish().context("cannot finish PNG")?;
    }
    Ok(out)
}
