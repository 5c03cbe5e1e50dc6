//! Added cost per image of each output step at 512 and 1024 px (median of N runs): encoding PNG / JPEG q90 /
//! WebP, signing the C2PA manifest into each, and the two watermark methods. For the README.
//!
//! usage: cargo run -p sd-provenance --example output_cost [-- RUNS]

use image::RgbImage;
use sd_provenance::credentials::{sign, ClaimInfo, Identity};
use sd_provenance::formats::{encode, OutputFormat};
use sd_provenance::metadata::{label_chunks, GenerationInfo};
use sd_provenance::watermark::{embed_with, Method, Payload};
use std::time::Instant;

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let photo = image::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.sd-data/astronaut.png"))?.to_rgb8();
    let dir = tempfile::tempdir()?;
    let (id, _) = Identity::local(dir.path())?;
    let chunks = label_chunks(&GenerationInfo { prompt: "an astronaut".into(), ..Default::default() });
    let claim = ClaimInfo {
        generator_name: "sd-rs",
        generator_version: env!("CARGO_PKG_VERSION"),
        model: Some("model"),
        model_hash: Some("0123456789"),
        parameters: "an astronaut\nSteps: 20",
        parent: None,
    };
    println!("| step | 512×512 | 1024×1024 |");
    println!("|---|---|---|");
    let imgs: Vec<RgbImage> = [512u32, 1024]
        .iter()
        .map(|&s| image::imageops::resize(&photo, s, s, image::imageops::FilterType::Lanczos3))
        .collect();
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for m in Method::ALL {
        let v =
            imgs.iter().map(|img| median_ms(runs, || drop(embed_with(&mut img.clone(), &Payload::SdV1, m)))).collect();
        rows.push((format!("watermark {m}"), v));
    }
    let formats = [
        (OutputFormat::Png, false, "PNG"),
        (OutputFormat::Jpeg, false, "JPEG q90"),
        (OutputFormat::Webp, false, "WebP q90"),
        (OutputFormat::Webp, true, "WebP lossless"),
    ];
    for (f, lossless, label) in formats {
        let enc: Vec<f64> =
            imgs.iter().map(|img| median_ms(runs, || drop(encode(img, f, 90, lossless, &chunks)))).collect();
        let bytes: Vec<Vec<u8>> =
            imgs.iter().map(|img| encode(img, f, 90, lossless, &chunks)).collect::<Result<_, _>>()?;
        let sizes: Vec<usize> = bytes.iter().map(Vec::len).collect();
        rows.push((format!("encode {label} (file: {} / {} KB)", sizes[0] / 1024, sizes[1] / 1024), enc));
        let signed: Vec<f64> = bytes.iter().map(|b| median_ms(runs, || drop(sign(b, f, &claim, &id)))).collect();
        let grow: Vec<usize> =
            bytes.iter().map(|b| sign(b, f, &claim, &id).map(|s| s.len() - b.len())).collect::<Result<_, _>>()?;
        rows.push((format!("sign C2PA into {label} (+{} / +{} KB)", grow[0] / 1024, grow[1] / 1024), signed));
    }
    for (name, v) in rows {
        println!("| {name} | {:.1} ms | {:.1} ms |", v[0], v[1]);
    }
    Ok(())
}
