//! C2PA Content Credentials end to end, checked by the C2PA consortium's own reader (PyPI c2pa-python, in the
//! set-up's virtualenv target/clients; a missing virtualenv fails the test): `sd generate` signs PNG, JPEG and WebP
//! (local CA made on first use in SD_RS_CONFIG_DIR, or the user's chain via --c2pa-cert/--c2pa-key), the reader
//! validates them and trusts them once the root is given as an anchor, a flipped byte is reported by both readers,
//! an init image signed by another tool (c2pa-python, scripts/c2pa_other_tool.py) becomes the parent ingredient,
//! and one whose creator reserved AI inference is refused with nothing written.

use sd_test_support::crc32;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn python() -> PathBuf {
    let p = Path::new(ROOT).join("target/clients/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` makes it (scripts/clients/requirements.txt has c2pa-python)",
        p.display()
    );
    p
}

fn sd(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.env("SD_RS_CONFIG_DIR", config).env_remove("SD_C2PA_CERT").env_remove("SD_C2PA_KEY");
    c
}

fn generate(config: &Path, out: &Path, extra: &[&str]) -> Output {
    sd(config)
        .args(["generate", "--model", &format!("{ROOT}/models/sd-tiny-shapes"), "a blue circle, centre"])
        .args(["--seed", "3", "--steps", "6", "--upscale", "10", "-q", "--overwrite", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// c2pa-python's view of each file.
fn their_reader(files: &[PathBuf], anchors: Option<&Path>) -> Vec<Value> {
    let mut c = Command::new(python());
    c.arg(format!("{ROOT}/scripts/check_formats_readers.py")).arg("--c2pa");
    if let Some(a) = anchors {
        c.arg("--anchors").arg(a);
    }
    let o = ok(c.args(files).output().unwrap());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().unwrap().iter().map(|r| r["c2pa"].clone()).collect()
}

fn our_reader(config: &Path, file: &Path, anchors: Option<&Path>) -> Value {
    let mut c = sd(config);
    c.args(["inspect", "--json"]).arg(file);
    if let Some(a) = anchors {
        c.arg("--trust-anchors").arg(a);
    }
    let o = ok(c.output().unwrap());
    serde_json::from_slice::<Value>(&o.stdout).unwrap()[0]["c2pa"].clone()
}

#[test]
fn outputs_are_signed_validated_and_tampering_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let files: Vec<PathBuf> = ["a.png", "b.jpg", "c.webp"].iter().map(|n| dir.path().join(n)).collect();
    let first = ok(generate(&config, &files[0], &[]));
    let note = String::from_utf8_lossy(&first.stderr);
    assert!(note.contains("made a local C2PA signing CA"), "{note}");
    for f in &files[1..] {
        let o = ok(generate(&config, f, &[]));
        assert!(!String::from_utf8_lossy(&o.stderr).contains("made a local"), "said once");
    }
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ok(sd(&config).arg("c2pa-root").output().unwrap()).stdout).unwrap();

    for r in their_reader(&files, None) {
        assert_eq!(r["state"], "Valid", "{r}");
        assert_eq!(r["failures"], serde_json::json!(["signingCredential.untrusted"]), "{r}");
        assert_eq!(r["actions"], serde_json::json!(["c2pa.created"]), "{r}");
    }
    for (f, r) in files.iter().zip(their_reader(&files, Some(&root))) {
        assert_eq!(r["state"], "Trusted", "{}: {r}", f.display());
        let ours = our_reader(&config, f, Some(&root));
        assert_eq!(ours["state"], "Trusted", "{ours}");
        assert_eq!(
            ours["digital_source_types"][0],
            "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
        );
        assert_eq!(ours["generation"]["model"], "sd-tiny-shapes");
    }
    // one flipped bit in each file: JPEG/WebP in the image data; PNG in its `parameters` text (someone editing
    // the recorded prompt), with the chunk CRC rewritten as an editor would
    let mut flipped = Vec::new();
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        if f.extension().unwrap() == "png" {
            edit_parameters_text(&mut b);
        } else {
            let at = b.len() - 40;
            b[at] ^= 1;
        }
        let p = f.with_file_name(format!("flipped-{}", f.file_name().unwrap().to_string_lossy()));
        std::fs::write(&p, b).unwrap();
        flipped.push(p);
    }
    for (f, r) in flipped.iter().zip(their_reader(&flipped, Some(&root))) {
        assert_eq!(r["state"], "Invalid", "{}: {r}", f.display());
        let ours = our_reader(&config, f, Some(&root));
        assert_eq!(ours["state"], "Invalid", "{ours}");
        assert!(
            ours["failures"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().contains("mismatch")),
            "{ours}"
        );
    }
}

#[test]
fn users_chain_is_trusted_by_its_root_and_init_images_keep_their_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    ok(Command::new(python()).arg(format!("{ROOT}/scripts/c2pa_other_tool.py")).arg(&other).output().unwrap());
    let (chain, key, root) = (other.join("chain.pem"), other.join("key.pem"), other.join("root.pem"));

    let mine = dir.path().join("mine.jpg");
    ok(generate(&config, &mine, &["--c2pa-cert", chain.to_str().unwrap(), "--c2pa-key", key.to_str().unwrap()]));
    assert!(!config.exists(), "no local CA is made when the user's certificate is given");
    let r = &their_reader(std::slice::from_ref(&mine), Some(&root))[0];
    assert_eq!(r["state"], "Trusted", "{r}");
    assert_eq!(r["signer"], "Test User", "{r}");
    assert_eq!(our_reader(&config, &mine, Some(&root))["state"], "Trusted");

    // img2img from an image signed by another tool: it becomes the parentOf ingredient, its manifest kept
    let edit = dir.path().join("edit.webp");
    ok(generate(&config, &edit, &["--init-image", other.join("allowed.png").to_str().unwrap(), "--strength", "0.5"]));
    let r = &their_reader(std::slice::from_ref(&edit), None)[0];
    assert_eq!(r["state"], "Valid", "{r}");
    assert_eq!(r["actions"], serde_json::json!(["c2pa.opened", "c2pa.edited"]), "{r}");
    assert_eq!(r["ingredients"], serde_json::json!([["init image", "parentOf"]]), "{r}");
    let ours = our_reader(&config, &edit, None);
    assert_eq!(ours["ingredients"][0], "init image (parentOf, with its own manifest)", "{ours}");
    assert!(ours["digital_source_types"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"));

    // the creator reserved AI inference: refused, exit 1, nothing written
    let refused = dir.path().join("refused.png");
    let o = generate(&config, &refused, &["--init-image", other.join("reserved.png").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("c2pa.ai_inference: notAllowed") && err.contains("Test User"), "{err}");
    assert!(!refused.exists());
}

/// Flips one bit of the prompt in the `parameters` tEXt chunk and rewrites that chunk's CRC.
fn edit_parameters_text(png: &mut [u8]) {
    let (mut pos, mut found) = (8, None);
    while pos + 12 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        if &png[pos + 4..pos + 8] == b"tEXt" && png[pos + 8..].starts_with(b"parameters\0") {
            found = Some((pos, len));
        }
        pos += 12 + len;
    }
    let (at, len) = found.expect("a parameters tEXt chunk");
    png[at + 8 + "parameters\0".len() + 2] ^= 1;
    let crc = crc32(&png[at + 4..at + 8 + len]);
    png[at + 8 + len..at + 12 + len].copy_from_slice(&crc.to_be_bytes());
}
