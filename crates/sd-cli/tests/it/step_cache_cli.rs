//! `sd generate --cache` through the real binary: DeepCache on the tiny SD1 fixture is recorded in the PNG
//! parameters and in `--json` (with the shallow UNet calls), and differs from the uncached image; bad syntax, SD3
//! models and ControlNet units are usage errors (exit 2) before any model work.

use std::path::Path;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// `sd generate` on a fixture model (5 steps, seed 3, f32 on the CPU, no watermark): exit code, stdout, stderr.
pub(crate) fn generate(model: &str, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--model", &format!("{FIXTURES}/models/{model}"), "a red fox", "--steps", "5"])
        .args(["--dtype", "f32", "--device", "cpu", "-q", "--seed", "3", "--no-watermark", "--safety", "off"])
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

#[test]
fn deepcache_is_recorded_in_metadata_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, cached) = (dir.path().join("plain.png"), dir.path().join("cached.png"));
    let (code, _, err) = generate("sd1", &plain, &["--sampler", "euler"]);
    assert_eq!(code, 0, "{err}");
    let (code, json, err) =
        generate("sd1", &cached, &["--cache", "deepcache:interval=2", "--json", "--sampler", "euler"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("--json output");
    assert_eq!(v["cache"], "deepcache:interval=2,branch=0");
    // Five Euler steps (one UNet call each) at interval 2: full at 0, 2, 4; shallow at 1, 3.
    assert_eq!(v["batches"][0]["unet_calls"], 5);
    assert_eq!(v["batches"][0]["shallow_calls"], 2);
    let text = String::from_utf8_lossy(&std::fs::read(&cached).expect("cached png")).to_string();
    assert!(text.contains("Cache: deepcache interval 2 branch 0"), "the parameters record the cache");
    let plain_text = String::from_utf8_lossy(&std::fs::read(&plain).expect("plain png")).to_string();
    assert!(!plain_text.contains("Cache:"), "an uncached image records no cache");
    let px = |p: &Path| image::open(p).expect("png").to_rgb8().into_raw();
    assert_ne!(px(&plain), px(&cached), "shallow steps change the image");
}

#[test]
fn bad_cache_settings_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.png");
    for (model, extra, needle) in [
        ("sd1", vec!["--cache", "deepcache:interval=1"], "interval must be within 2..="),
        ("sd1", vec!["--cache", "deepcache:speed=9"], "not `speed`"),
        ("sd1", vec!["--cache", "teacache"], "off | deepcache[:interval=N,branch=B]"),
        ("sd3", vec!["--cache", "deepcache"], "not SD3"),
        (
            "sd1",
            vec![
                "--cache",
                "deepcache",
                "--controlnet",
                &format!("{FIXTURES}/models/controlnet-sd1"),
                "--control-image",
                &format!("{FIXTURES}/pipeline/init.png"),
            ],
            "does not combine with --controlnet",
        ),
    ] {
        let (code, _, err) = generate(model, &out, &extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote an image");
    }
}
