//! Image decoding, resizing, tensor conversion (diffusers rounding) and atomic image writes.

use image::{ImageEncoder, RgbImage};
use sd_core::atomic::Overwrite;
use sd_core::image_io::*;
use std::io::Cursor;
use tch::{Device, Kind, Tensor};

/// A deterministic test picture with smooth gradients and some hard edges.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            if (x / 4 + y / 4) % 2 == 0 { 30 } else { 220 },
        ])
    })
}

fn encode(img: &RgbImage, format: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h, raw) = (img.width(), img.height(), img.as_raw());
    let c = image::ExtendedColorType::Rgb8;
    match format {
        "png" => image::codecs::png::PngEncoder::new(&mut out).write_image(raw, w, h, c).unwrap(),
        "jpeg" => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).write_image(raw, w, h, c).unwrap(),
        "webp" => {
            image::codecs::webp::WebPEncoder::new_lossless(Cursor::new(&mut out)).write_image(raw, w, h, c).unwrap()
        }
        _ => unreachable!(),
    }
    out
}

#[test]
fn png_jpeg_webp_round_trips() {
    let img = picture(40, 24);
    assert_eq!(decode_rgb(&encode(&img, "png")).unwrap(), img, "PNG is lossless");
    assert_eq!(decode_rgb(&encode(&img, "webp")).unwrap(), img, "lossless WebP");
    let jpeg = decode_rgb(&encode(&img, "jpeg")).unwrap();
    assert_eq!(jpeg.dimensions(), img.dimensions());
    let mean_abs: f64 = jpeg.as_raw().iter().zip(img.as_raw()).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>()
        / img.as_raw().len() as f64;
    assert!(mean_abs < 6.0, "JPEG q95 mean abs error {mean_abs}");

    // Grey + alpha PNG decodes to RGB with alpha dropped.
    let mut out = Vec::new();
    let la: Vec<u8> = (0..16).flat_map(|i| [i as u8 * 10, 128]).collect();
    image::codecs::png::PngEncoder::new(&mut out).write_image(&la, 4, 4, image::ExtendedColorType::La8).unwrap();
    let rgb = decode_rgb(&out).unwrap();
    assert_eq!(rgb.get_pixel(3, 0).0, [30, 30, 30]);

    // Through a file, and the mask loader.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.webp");
    std::fs::write(&p, encode(&img, "webp")).unwrap();
    assert_eq!(load_rgb(&p).unwrap(), img);
    assert_eq!(load_luma(&p).unwrap().dimensions(), (40, 24));
}

#[test]
fn bad_images_give_errors_not_panics() {
    let png = encode(&picture(32, 32), "png");
    let err = format!("{:#}", decode_rgb(&png[..png.len() / 2]).unwrap_err());
    assert!(err.contains("invalid or truncated"), "{err}");

    let err = format!("{:#}", decode_rgb(b"this is a text file, not a picture").unwrap_err());
    assert!(err.contains("not a recognised image"), "{err}");
    assert!(decode_rgb(&[]).is_err());

    // A PNG header claiming 100000×100000 pixels: refused before any allocation.
    let mut huge = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut huge, 100_000, 100_000);
        enc.set_color(png::ColorType::Rgb);
        let w = enc.write_header().unwrap();
        drop(w);
    }
    let err = format!("{:#}", decode_rgb(&huge).unwrap_err());
    assert!(err.contains("Png") && (err.contains("limit") || err.contains("Limit")), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let err = format!("{:#}", load_rgb(&missing).unwrap_err());
    assert!(err.contains("cannot read image") && err.contains("nope.png"), "{err}");
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, &encode(&picture(16, 16), "jpeg")[..40]).unwrap();
    let err = format!("{:#}", load_rgb(&broken).unwrap_err());
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn resize_filters() {
    let img = picture(16, 8);
    for name in ["nearest", "bilinear", "triangle", "bicubic", "catmullrom", "lanczos", "Lanczos3"] {
        let f: Filter = name.parse().unwrap();
        let out = resize(&img, 24, 12, f);
        assert_eq!(out.dimensions(), (24, 12), "{name}");
        assert_eq!(resize(&img, 16, 8, f), img, "same size is a copy");
    }
    let err = "box".parse::<Filter>().unwrap_err().to_string();
    assert!(err.contains("unknown resize filter `box`") && err.contains("lanczos"), "{err}");
    // Nearest ×2 duplicates every pixel exactly.
    let up = resize(&img, 32, 16, Filter::Nearest);
    for (x, y, p) in img.enumerate_pixels() {
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            assert_eq!(up.get_pixel(2 * x + dx, 2 * y + dy), p);
        }
    }
    // A flat image stays flat under every smoothing filter.
    let flat = RgbImage::from_pixel(10, 10, image::Rgb([77, 140, 201]));
    for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
        assert!(resize(&flat, 17, 7, f).pixels().all(|p| p.0 == [77, 140, 201]), "{f:?}");
    }
}

/// diffusers' postprocess in float32: `((x / 2 + 0.5).clamp(0, 1) * 255).round()` (round half to even).
fn diffusers_u8(x: f32) -> u8 {
    ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

#[test]
fn tensor_image_conversion_matches_diffusers_rounding() {
    // Every 8-bit value survives image → [-1, 1] tensor → image.
    let img = RgbImage::from_fn(256, 1, |x, _| image::Rgb([x as u8, 255 - x as u8, (x * 7 % 256) as u8]));
    let t = rgb_to_tensor(&img, Range::Signed, Kind::Float, Device::Cpu);
    assert_eq!(t.size(), vec![1, 3, 1, 256]);
    let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    assert_eq!(v[0], -1.0);
    assert_eq!(v[255], 1.0);
    assert_eq!(tensor_to_rgb(&t, Range::Signed).unwrap(), img);
    let unit = rgb_to_tensor(&img, Range::Unit, Kind::Float, Device::Cpu);
    assert_eq!(Vec::<f32>::try_from(unit.flatten(0, -1)).unwrap()[1], 1.0 / 255.0);
    assert_eq!(tensor_to_rgb(&unit, Range::Unit).unwrap(), img);

    // Decoder outputs anywhere in (and beyond) [-1, 1], including values whose scaled form lands near .5.
    let xs: Vec<f32> = (0..3000)
        .map(|i| -1.3 + i as f32 * (2.6 / 2999.0))
        .chain((0..256).map(|k| (k as f32 + 0.5) / 127.5 - 1.0))
        .collect();
    let n = xs.len() as i64;
    let t = Tensor::from_slice(&xs).reshape([1, 1, 1, n]).repeat([1, 3, 1, 1]);
    let out = tensor_to_rgb(&t, Range::Signed).unwrap();
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(out.get_pixel(i as u32, 0).0[0], diffusers_u8(*x), "x = {x}");
    }
    // bf16 decoder output is upcast first.
    let out16 = tensor_to_rgb(&t.to_kind(Kind::BFloat16), Range::Signed).unwrap();
    assert_eq!(out16.dimensions(), out.dimensions());

    let err =
        tensor_to_rgb(&Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu)), Range::Signed).unwrap_err().to_string();
    assert!(err.contains("batch of 2"), "{err}");
    let err =
        tensor_to_rgb(&Tensor::zeros([4, 4, 4], (Kind::Float, Device::Cpu)), Range::Signed).unwrap_err().to_string();
    assert!(err.contains("[3, H, W]") && err.contains("[4, 4, 4]"), "{err}");
}

/// How the pipeline writes an image: encoded in memory, then written atomically.
fn save(path: &std::path::Path, img: &RgbImage, overwrite: Overwrite) -> anyhow::Result<()> {
    sd_core::atomic::write_atomic(path, overwrite, &encode(img, "png"))
}

#[test]
fn atomic_save_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/nested/image.png");
    let a = picture(8, 8);
    save(&path, &a, Overwrite::Refuse).unwrap();
    assert_eq!(load_rgb(&path).unwrap(), a);
    let b = RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
    let err = save(&path, &b, Overwrite::Refuse).unwrap_err().to_string();
    assert!(err.contains("already exists") && err.contains("image.png"), "{err}");
    assert_eq!(load_rgb(&path).unwrap(), a, "refused save left the old file alone");
    save(&path, &b, Overwrite::Allow).unwrap();
    assert_eq!(load_rgb(&path).unwrap(), b);
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["image.png"], "no temp files left behind");
}
