//! `sd generate --offload model|sequential` and `--vae-tiling` through the real binary on the CPU: the same PNG
//! pixels as without them (the library tests make parked weights vanish to prove each component moves; here the
//! flags are wired end to end), bad values are usage errors, and SD3 refuses offload rather than ignoring it.

use std::path::Path;

fn generate(model: &str, out: &Path, extra: &[&str]) -> (i32, String) {
    let (code, _, stderr) = crate::step_cache_cli::generate(model, out, extra);
    (code, stderr)
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

#[test]
fn offload_modes_keep_the_pixels() {
    let dir = tempfile::tempdir().expect("tempdir");
    for model in ["sd1", "sdxl"] {
        let reference = dir.path().join(format!("{model}.png"));
        let (code, err) = generate(model, &reference, &[]);
        assert_eq!(code, 0, "{err}");
        let want = pixels(&reference);
        for extra in [&["--offload", "model"][..], &["--offload", "sequential"], &["--offload", "none", "--vae-tiling"]]
        {
            let path = dir.path().join(format!("{model}-{}.png", extra.join("-")));
            let (code, err) = generate(model, &path, extra);
            assert_eq!(code, 0, "{model} {extra:?}: {err}");
            assert_eq!(pixels(&path), want, "{model} {extra:?}: the pixels changed");
        }
    }
}

#[test]
fn bad_offload_values_and_sd3_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.png");
    let (code, err) = generate("sd1", &out, &["--offload", "gpu"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--offload") && err.contains("sequential"), "{err}");
    let (code, err) = generate("sd3", &out, &["--offload", "model"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--offload is not supported for SD3"), "{err}");
    assert!(!out.exists(), "no image may be written on a usage error");
}
