//! PNG / JPEG / WebP output: the EXIF UserComment block equals piexif's (A1111's writer) byte for byte, files
//! written the way A1111 writes them are read by `inspect`, and our own JPEG / WebP carry parameters, XMP and a
//! readable watermark (fixtures from scripts/fixtures/gen_52_formats.py).

use image::RgbImage;
use sd_provenance::formats::{encode, exif_user_comment, OutputFormat};
use sd_provenance::inspect::inspect_bytes;
use sd_provenance::metadata::{label_chunks, GenerationInfo, Mode};
use sd_provenance::watermark::{embed_with, Confidence, Method, Payload};
use serde_json::Value;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn fixture(rel: &str) -> Vec<u8> {
    let p = format!("{DIR}/{rel}");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e} (run scripts/fixtures/gen_52_formats.py)"))
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&fixture(rel)).unwrap()
}

#[test]
fn exif_user_comment_equals_piexif() {
    for case in json("formats/exif.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = case["tiff_hex"].as_str().unwrap();
        let got: String = exif_user_comment(text).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want, "EXIF block for {text:?}");
    }
}

#[test]
fn a1111_style_jpeg_and_webp_are_read() {
    let want = json("formats/a1111_style.json")["parameters"].as_str().unwrap().to_string();
    for (name, format) in [("a1111_style.jpg", "jpeg"), ("a1111_style.webp", "webp")] {
        let r = inspect_bytes(name, &fixture(&format!("formats/{name}"))).unwrap();
        assert_eq!((r.format.as_str(), r.width, r.height), (format, 64, 64));
        assert_eq!(r.parameters_raw.as_deref(), Some(want.as_str()), "{name}");
        assert_eq!(r.parameters.as_ref().unwrap().prompt, "a red fox in snow");
        assert!(r.watermark.is_none(), "64×64 is too small to carry a mark");
    }
}

fn photo() -> RgbImage {
    let bytes = fixture("watermark_svd/photo_256x256.png");
    let small = image::load_from_memory(&bytes).unwrap().to_rgb8();
    // 512×512 from the 256×256 crop, so the mark has the room it has on a real output
    image::imageops::resize(&small, 512, 512, image::imageops::FilterType::Lanczos3)
}

fn labelled(format: OutputFormat, method: Method, quality: u8, lossless: bool) -> (RgbImage, Vec<u8>) {
    let mut img = photo();
    let outcome = embed_with(&mut img, &Payload::SdV1, method).unwrap();
    let info = GenerationInfo {
        prompt: "an astronaut, 宇航员".into(),
        negative_prompt: "blurry".into(),
        mode: Mode::Txt2Img,
        watermark: Some(outcome),
        width: 512,
        height: 512,
        ..Default::default()
    };
    let bytes = encode(&img, format, quality, lossless, &label_chunks(&info)).unwrap();
    (img, bytes)
}

#[test]
fn our_jpeg_and_webp_carry_every_label() {
    let cases = [
        (OutputFormat::Jpeg, "jpeg", false),
        (OutputFormat::Webp, "webp", false),
        (OutputFormat::Webp, "webp", true),
        (OutputFormat::Png, "png", false),
    ];
    for (format, name, lossless) in cases {
        let (pixels, bytes) = labelled(format, Method::DwtDctSvd, 90, lossless);
        let r = inspect_bytes(name, &bytes).unwrap();
        assert_eq!((r.format.as_str(), r.width, r.height), (name, 512, 512));
        let p = r.parameters.as_ref().unwrap_or_else(|| panic!("{name}: no parameters"));
        assert_eq!(p.prompt, "an astronaut, 宇航员");
        assert_eq!(p.negative_prompt, "blurry");
        assert!(r.xmp_present, "{name}");
        assert_eq!(
            r.digital_source_type.as_deref(),
            Some("http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"),
            "{name}"
        );
        assert_eq!(r.aigc.as_ref().map(|a| a.label.as_str()), Some("1"), "{name}");
        assert_eq!(r.watermark_record.as_deref(), Some("invisible-watermark dwtDctSvd StableDiffusionV1"));
        let d = r.watermark.as_ref().unwrap();
        let svd = d.iter().find(|d| d.method == Method::DwtDctSvd && d.total_bits == 136).unwrap();
        assert_eq!(svd.confidence, Confidence::VeryLikely, "{name}: {svd:?}");
        if !format.is_lossy(lossless) {
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back, pixels, "{name} must be lossless");
        }
    }
}

#[test]
fn dwtdctsvd_survives_default_jpeg_and_dwtdct_does_not() {
    let (_, svd) = labelled(OutputFormat::Jpeg, Method::DwtDctSvd, 90, false);
    let (_, dct) = labelled(OutputFormat::Jpeg, Method::DwtDct, 90, false);
    let bits = |bytes: &[u8], m: Method| {
        let r = inspect_bytes("x.jpg", bytes).unwrap();
        r.watermark.unwrap().into_iter().find(|d| d.method == m && d.total_bits == 136).unwrap().matched_bits
    };
    let (s, d) = (bits(&svd, Method::DwtDctSvd), bits(&dct, Method::DwtDct));
    eprintln!("JPEG q90, 512 px photo: dwtDctSvd {s}/136, dwtDct {d}/136");
    assert!(s >= 130, "dwtDctSvd kept only {s}/136 bits through JPEG q90");
    assert!(d < s, "dwtDct ({d}) should not beat dwtDctSvd ({s}) through JPEG");
}

#[test]
fn formats_follow_the_extension() {
    for (p, f) in [("a.png", OutputFormat::Png), ("b.JPG", OutputFormat::Jpeg), ("c.jpeg", OutputFormat::Jpeg)] {
        assert_eq!(OutputFormat::from_path(Path::new(p)).unwrap(), f);
    }
    assert_eq!(OutputFormat::from_path(Path::new("out/{seed}.webp")).unwrap(), OutputFormat::Webp);
    let e = OutputFormat::from_path(Path::new("x.gif")).unwrap_err().to_string();
    assert!(e.contains("unsupported image format .gif") && e.contains(".webp"), "{e}");
    let e = OutputFormat::from_path(Path::new("noext")).unwrap_err().to_string();
    assert!(e.contains("no file extension"), "{e}");
    let err = encode(&RgbImage::new(8, 8), OutputFormat::Jpeg, 0, false, &[]).unwrap_err().to_string();
    assert!(err.contains("JPEG quality 0"), "{err}");
    let err = encode(&RgbImage::new(8, 8), OutputFormat::Webp, 101, false, &[]).unwrap_err().to_string();
    assert!(err.contains("WebP quality 101"), "{err}");
    // lossless WebP has no quality to check
    encode(&RgbImage::new(8, 8), OutputFormat::Webp, 0, true, &[]).unwrap();
    let err = encode(&RgbImage::new(16384, 1), OutputFormat::Webp, 90, false, &[]).unwrap_err().to_string();
    assert!(err.contains("16384×1") && err.contains("16383"), "{err}");
}

/// Lossy WebP is libwebp's VP8 bitstream, lossless is VP8L; both are the extended format (VP8X first) so that the
/// EXIF and XMP chunks are allowed, and any WebP reader (here the `image` crate's) decodes them.
#[test]
fn lossy_and_lossless_webp_are_the_bitstreams_they_claim() {
    for (lossless, bitstream) in [(false, *b"VP8 "), (true, *b"VP8L")] {
        let (pixels, bytes) = labelled(OutputFormat::Webp, Method::DwtDctSvd, 90, lossless);
        let chunks = sd_provenance::formats::webp_chunks(&bytes).unwrap();
        let names: Vec<[u8; 4]> = chunks.iter().map(|(f, _)| *f).collect();
        assert_eq!(names, vec![*b"VP8X", bitstream, *b"EXIF", *b"XMP "], "lossless={lossless}");
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let mean_err = back.as_raw().iter().zip(pixels.as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / pixels.as_raw().len() as f64;
        if lossless {
            assert_eq!(mean_err, 0.0);
        } else {
            // q90 on a photo: visibly the same picture, not the same bytes
            assert!(mean_err > 0.0 && mean_err < 4.0, "mean abs error {mean_err}");
        }
    }
}

/// The default for `.webp` (lossy, quality 90, dwtDctSvd) keeps the mark, as the JPEG default does.
#[test]
fn dwtdctsvd_survives_default_lossy_webp() {
    let (_, bytes) =
        labelled(OutputFormat::Webp, Method::DwtDctSvd, sd_provenance::formats::DEFAULT_JPEG_QUALITY, false);
    let r = inspect_bytes("x.webp", &bytes).unwrap();
    let d = r.watermark.unwrap().into_iter().find(|d| d.method == Method::DwtDctSvd && d.total_bits == 136).unwrap();
    eprintln!("WebP q90, 512 px photo: dwtDctSvd {}/136", d.matched_bits);
    assert!(d.matched_bits >= 130, "dwtDctSvd kept only {}/136 bits through WebP q90", d.matched_bits);
}

#[test]
fn truncated_webp_is_a_clear_error() {
    let (_, bytes) = labelled(OutputFormat::Webp, Method::DwtDct, 90, false);
    let e = format!("{:#}", inspect_bytes("cut.webp", &bytes[..bytes.len() / 2]).unwrap_err());
    assert!(e.contains("cut.webp") && e.contains("WebP"), "{e}");
}
