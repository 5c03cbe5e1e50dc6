//! `sd generate -o x.{png,jpg,webp}`: the extension picks the format, every format carries the A1111 parameters
//! and the XMP source type as independent readers see them (Pillow + piexif, the way A1111's PNG Info reads
//! them: scripts/check_formats_readers.py in the set-up's virtualenv target/clients, pinned in
//! scripts/clients/requirements.txt; a missing virtualenv fails the test), the watermark method follows the
//! format, and any other extension is a usage error before the model loads.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

fn generate(out: &Path, extra: &[&str]) {
    let o = sd()
        .args(["generate", "--model", &format!("{ROOT}/models/sd-tiny-shapes"), "a red square, top left"])
        .args(["--seed", "7", "--steps", "8", "--upscale", "10", "-q", "--overwrite", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn inspect(path: &Path) -> Value {
    let o = sd().args(["inspect", "--json"]).arg(path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
}

fn python() -> PathBuf {
    let p = Path::new(ROOT).join("target/clients/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` makes it (scripts/clients/requirements.txt has the readers)",
        p.display()
    );
    p
}

fn matched(report: &Value, method: &str) -> u64 {
    let w = report["watermark"].as_array().unwrap();
    w.iter().find(|d| d["method"] == method && d["total_bits"] == 136).unwrap()["matched_bits"].as_u64().unwrap()
}

#[test]
fn every_format_carries_parameters_xmp_and_a_readable_mark() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["a.png", "b.jpg", "c.webp", "d.webp"].iter().map(|n| dir.path().join(n)).collect();
    for (f, extra) in files.iter().zip([&[][..], &[], &[], &["--lossless"]]) {
        generate(f, &[&["--no-c2pa"][..], extra].concat());
    }
    let o =
        Command::new(python()).arg(format!("{ROOT}/scripts/check_formats_readers.py")).args(&files).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let readers: Value = serde_json::from_slice(&o.stdout).unwrap();
    for ((f, theirs), (format, method)) in files.iter().zip(readers.as_array().unwrap()).zip([
        ("png", "dwtDct"),
        ("jpeg", "dwtDctSvd"),
        ("webp", "dwtDctSvd"),
        ("webp", "dwtDct"),
    ]) {
        let ours = inspect(f);
        assert_eq!(ours["format"], format);
        let raw = ours["parameters_raw"].as_str().unwrap();
        assert!(raw.starts_with("a red square, top left\n"), "{raw}");
        assert_eq!(theirs["parameters"].as_str(), Some(raw), "{format}: piexif/Pillow read different parameters");
        assert_eq!(
            theirs["source_type"], "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
            "{format}"
        );
        assert!(raw.contains(&format!("Watermark: invisible-watermark {method} StableDiffusionV1")), "{raw}");
        let bits = matched(&ours, method);
        if f.ends_with("c.webp") {
            // lossy WebP at q90 on this flat, 10× enlarged picture costs a few bits (132 of 136 when measured);
            // far above "very likely"
            assert!(bits >= 125, "{format}: {method} mark kept {bits}/136 bits");
        } else {
            assert_eq!(bits, 136, "{format}: {method} mark");
        }
    }
    // lossy WebP is libwebp's VP8 bitstream, `--lossless` the VP8L one
    let has = |f: &Path, fourcc: &[u8]| std::fs::read(f).unwrap().windows(4).any(|w| w == fourcc);
    assert!(has(&files[2], b"VP8 ") && !has(&files[2], b"VP8L"), "c.webp should be lossy");
    assert!(has(&files[3], b"VP8L"), "d.webp should be lossless");
}

#[test]
fn method_and_quality_flags_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (q95, q60) = (dir.path().join("q95.jpg"), dir.path().join("q60.jpg"));
    generate(&q95, &["--no-c2pa", "--quality", "95", "--watermark-method", "dwtDct"]);
    generate(&q60, &["--no-c2pa", "--quality", "60"]);
    assert!(std::fs::metadata(&q60).unwrap().len() < std::fs::metadata(&q95).unwrap().len());
    let (w95, w60) = (dir.path().join("q95.webp"), dir.path().join("q60.webp"));
    generate(&w95, &["--no-c2pa", "--quality", "95"]);
    generate(&w60, &["--no-c2pa", "--quality", "60"]);
    assert!(std::fs::metadata(&w60).unwrap().len() < std::fs::metadata(&w95).unwrap().len());
    let r = inspect(&q95);
    assert!(r["parameters_raw"].as_str().unwrap().contains("invisible-watermark dwtDct StableDiffusionV1"));
}

#[test]
fn unknown_extensions_and_misplaced_quality_are_usage_errors_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    // the model path does not exist: the format error must come first
    for (out, extra, want) in [
        ("x.gif", vec![], "unsupported image format .gif"),
        ("x", vec![], "no file extension"),
        ("x.png", vec!["--quality", "80"], "--quality applies to JPEG and WebP output only"),
        ("x.jpg", vec!["--quality", "0"], "0 is not in 1..=100"),
        ("x.jpg", vec!["--lossless"], "--lossless applies to WebP output only"),
        ("x.webp", vec!["--lossless", "--quality", "80"], "cannot be used with"),
    ] {
        let o = sd()
            .args(["generate", "--model", "/nonexistent/model", "p", "-o"])
            .arg(dir.path().join(out))
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{out}: {err}");
        assert!(err.contains(want), "{out}: {err}");
        assert!(!err.contains("nonexistent"), "{out}: the model was looked at first: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be written");
}
