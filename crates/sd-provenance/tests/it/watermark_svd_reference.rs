//! dwtDctSvd against PyPI invisible-watermark 0.2.0 (fixtures from scripts/fixtures/gen_51_watermark_svd.py):
//! byte-for-byte equal encoder outputs, exactly equal decoded bits, including after the reference's JPEG.

use image::RgbImage;
use sd_provenance::watermark::{decode_bits_with, embed_with, Method, Payload, WatermarkOutcome};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn load(rel: &str) -> RgbImage {
    let path = format!("{DIR}/{rel}");
    image::open(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e} (run scripts/fixtures/gen_51_watermark_svd.py)"))
        .to_rgb8()
}

fn vectors() -> Value {
    let path = format!("{DIR}/watermark_svd/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

fn bits_of(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|b| b.as_u64().unwrap() == 1).collect()
}

fn payload(name: &str) -> Payload {
    match name {
        "sdv1" => Payload::SdV1,
        "sdxl" => Payload::Sdxl,
        other => panic!("unknown payload {other}"),
    }
}

#[test]
fn encoder_is_byte_exact() {
    let cases = [
        ("watermark_svd/photo_256x256.png", "photo_256x256", "sdv1"),
        ("watermark_svd/photo_256x256.png", "photo_256x256", "sdxl"),
        ("watermark/in_256x384.png", "in_256x384", "sdv1"),
        ("watermark/in_261x259.png", "in_261x259", "sdv1"),
    ];
    for (input, stem, name) in cases {
        let mut img = load(input);
        let outcome = embed_with(&mut img, &payload(name), Method::DwtDctSvd).unwrap();
        assert!(matches!(outcome, WatermarkOutcome::Applied { method: Method::DwtDctSvd, .. }), "{outcome:?}");
        let want = load(&format!("watermark_svd/out_{stem}_{name}.png"));
        let diff = img.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{stem} {name}: {diff} of {} bytes differ", want.as_raw().len());
    }
}

#[test]
fn decoder_recovers_reference_bits() {
    let v = vectors();
    for (file, per_payload) in v["images"].as_object().unwrap() {
        let img = load(&format!("watermark_svd/{file}"));
        for (name, want) in per_payload.as_object().unwrap() {
            let n = v["payload_bits"][name].as_array().unwrap().len();
            assert_eq!(decode_bits_with(&img, n, Method::DwtDctSvd).unwrap(), bits_of(want), "{file} as {name}");
        }
    }
    // the marked photo after OpenCV's JPEG at quality 75, as OpenCV decodes it: the same bits as the reference
    let (file, want) = v["attacked"].as_object().unwrap().iter().next().unwrap();
    let img = load(&format!("watermark_svd/{file}"));
    assert_eq!(decode_bits_with(&img, 136, Method::DwtDctSvd).unwrap(), bits_of(want), "{file}");
}

/// The same JPEG through the `image` crate's decoder (a few levels off libjpeg's): the payload still survives.
#[test]
fn mark_survives_jpeg_with_our_decoder() {
    let img = load("watermark_svd/out_photo_256x256_sdv1_q75.jpg");
    let got = decode_bits_with(&img, 136, Method::DwtDctSvd).unwrap();
    let kept = got.iter().zip(Payload::SdV1.bits()).filter(|(a, b)| **a == *b).count();
    eprintln!("dwtDctSvd after JPEG q75, image-crate decoder: {kept}/136 bits");
    assert!(kept >= 130, "only {kept} of 136 bits survive JPEG q75");
}

#[test]
fn methods_parse_by_reference_name() {
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>().unwrap(), m);
    }
    let err = "rivaGan".parse::<Method>().unwrap_err().to_string();
    assert!(err.contains("dwtDct or dwtDctSvd"), "{err}");
}
