//! Writes labelled PNGs (ASCII and Chinese prompts) for checking with independent readers:
//! `cargo run -p sd-provenance --example labelled_png -- OUT_DIR` then
//! `python scripts/check_png_metadata.py OUT_DIR/*.png`.

use anyhow::{Context, Result};
use image::RgbImage;
use sd_provenance::metadata::{encode_png, label_chunks, GenerationInfo, Mode};
use sd_provenance::watermark::{embed, Payload, WatermarkOutcome};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: labelled_png OUT_DIR")?;
    std::fs::create_dir_all(&dir)?;
    let cases = [
        (
            "ascii_txt2img.png",
            "a lighthouse at dusk, oil painting, \"golden hour\": warm",
            "blurry, lowres",
            Mode::Txt2Img,
            true,
        ),
        ("chinese_img2img.png", "一只猫坐在垫子上，水墨画风格", "模糊，低质量", Mode::Img2Img, false),
    ];
    for (name, prompt, negative, mode, mark) in cases {
        let mut img = RgbImage::from_fn(320, 256, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) / 3 % 256) as u8])
        });
        let outcome = if mark { embed(&mut img, &Payload::SdV1)? } else { WatermarkOutcome::Disabled };
        let info = GenerationInfo {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            seed: 42,
            width: 320,
            height: 256,
            model_name: Some("v1-5-pruned-emaonly".into()),
            model_hash: Some("6ce0161689".into()),
            denoising_strength: (mode != Mode::Txt2Img).then_some(0.6),
            mode,
            watermark: Some(outcome),
            ..Default::default()
        };
        let path = format!("{dir}/{name}");
        std::fs::write(&path, encode_png(&img, &label_chunks(&info))?)?;
        println!("{path}");
    }
    Ok(())
}
