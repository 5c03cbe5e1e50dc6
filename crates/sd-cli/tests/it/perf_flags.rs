//! `sd generate --attention / --threads / --low-memory` through the real binary: every attention backend and the
//! low-memory mode produce the same image from the tiny SD1 fixture (f32), and bad values are usage errors.

use std::path::Path;
use std::process::Command;

fn generate(out: &Path, extra: &[&str]) -> (i32, String) {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1");
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--model", model, "a red fox", "--steps", "2", "--dtype", "f32", "--device", "cpu", "-q"])
        .args(["--seed", "3", "--no-watermark", "--safety", "off", "--output"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

/// Backends differ only in rounding (f32, ≤ 1e-5 in the attention outputs): the 8-bit images may differ by at
/// most 1 level per channel.
#[test]
fn attention_backends_and_low_memory_give_the_same_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = dir.path().join("sdpa.png");
    let (code, err) = generate(&reference, &["--attention", "sdpa", "--threads", "1"]);
    assert_eq!(code, 0, "{err}");
    let want = pixels(&reference);
    for (name, extra) in [
        ("auto", &["--attention", "auto"][..]),
        ("matmul", &["--attention", "matmul"][..]),
        ("matmul7", &["--attention", "matmul:7"][..]),
        ("sliced", &["--attention", "sliced:5"][..]),
        ("lowmem", &["--low-memory"][..]),
        ("nhwc", &["--memory-format", "nhwc"][..]),
    ] {
        let path = dir.path().join(format!("{name}.png"));
        let (code, err) = generate(&path, extra);
        assert_eq!(code, 0, "{name}: {err}");
        let got = pixels(&path);
        assert_eq!(got.len(), want.len(), "{name}: image size");
        let diff = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        assert!(diff <= 1, "{name}: pixels differ from --attention sdpa by up to {diff} levels");
    }
}

#[test]
fn bad_attention_and_threads_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.png");
    let (code, err) = generate(&out, &["--attention", "flash"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("attention mode") && err.contains("sdpa"), "{err}");
    let (code, err) = generate(&out, &["--threads", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threads"), "{err}");
    assert!(!out.exists(), "no image may be written on a usage error");
}

/// `--upscale N` enlarges the written image N× (Lanczos) and records it as A1111's Extras tab does.
#[test]
fn upscale_enlarges_and_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("up.png");
    let (code, err) = generate(&out, &["--upscale", "3"]);
    assert_eq!(code, 0, "{err}");
    let img = image::open(&out).expect("open").to_rgb8();
    assert_eq!(img.dimensions(), (96, 96), "the fixture model draws 32 px by default; × 3");
    let bytes = std::fs::read(&out).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("Postprocess upscale by: 3") && text.contains("Postprocess upscaler: Lanczos"),
        "parameters chunk"
    );
    for bad in ["0", "17", "x"] {
        let (code, err) = generate(&dir.path().join("bad.png"), &["--upscale", bad]);
        assert_eq!(code, 2, "--upscale {bad}: {err}");
        assert!(err.contains("--upscale"), "{err}");
    }
    let (code, err) = generate(&dir.path().join("bad.png"), &["--memory-format", "nchw4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--memory-format"), "{err}");
}
