//! `sd inspect` end to end: a watermarked reference fixture reads as marked; bad files give a message and exit 1.

use std::process::Command;

const WM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/watermark");

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

#[test]
fn inspects_a_marked_png_as_json() {
    let out = sd().args(["inspect", "--json", &format!("{WM}/out_256x384_sdv1.png")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let marks = v[0]["watermark"].as_array().unwrap();
    let sdv1 = marks.iter().find(|d| d["total_bits"] == 136).unwrap();
    assert!(sdv1["confidence"] == "likely" || sdv1["confidence"] == "very_likely", "{sdv1}");
    assert_eq!(v[0]["width"], 256);
}

#[test]
fn bad_files_exit_1_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("notes.png");
    std::fs::write(&txt, "not an image").unwrap();
    let png = std::fs::read(format!("{WM}/in_261x259.png")).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    let out = sd().arg("inspect").arg(&txt).arg(&cut).arg(dir.path().join("missing.png")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a PNG, JPEG or WebP image"), "{err}");
    assert!(err.contains("truncated PNG"), "{err}");
    assert!(err.contains("missing.png"), "{err}");
    assert!(err.contains("3 of 3 image(s) could not be inspected"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
