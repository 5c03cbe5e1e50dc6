//! C2PA Content Credentials made with the `c2pa` crate and read back by it (the independent reader,
//! c2pa-python, runs in crates/sd-cli/tests/c2pa_readers.rs): PNG, JPEG and WebP are signed and valid, the local
//! CA's root makes them trusted, a flipped byte is reported, an init image with its own manifest becomes a
//! parentOf ingredient, and an init image whose creator reserved AI inference is refused.

use image::RgbImage;
use sd_provenance::credentials::{check_inference_allowed, inspect, sign, ClaimInfo, Identity, COMPOSITE, TRAINED};
use sd_provenance::formats::{encode, OutputFormat};
use sd_provenance::metadata::{label_chunks, GenerationInfo};
use std::io::Cursor;

fn picture() -> RgbImage {
    RgbImage::from_fn(320, 256, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8]))
}

fn claim(parent: Option<&[u8]>) -> ClaimInfo<'_> {
    ClaimInfo {
        generator_name: "sd-rs",
        generator_version: "0.1.0",
        model: Some("sd-tiny-shapes"),
        model_hash: Some("85878e84c9"),
        parameters: "a cat\nNegative prompt: \nSteps: 20, Seed: 1",
        parent,
    }
}

fn encoded(format: OutputFormat) -> Vec<u8> {
    encode(
        &picture(),
        format,
        90,
        false,
        &label_chunks(&GenerationInfo { prompt: "a cat".into(), ..Default::default() }),
    )
    .unwrap()
}

#[test]
fn signed_outputs_validate_and_trust_follows_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let (id, made) = Identity::local(dir.path()).unwrap();
    let root = std::fs::read_to_string(made.expect("made on first use")).unwrap();
    let (_, again) = Identity::local(dir.path()).unwrap();
    assert!(again.is_none(), "the CA is made once");
    for format in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp] {
        let signed = sign(&encoded(format), format, &claim(None), &id).unwrap();
        let r = inspect(&signed, None).unwrap().expect("a manifest");
        assert_eq!(r.state, "Valid", "{format:?}: {r:?}");
        // without anchors the only remark is that the signer is not trusted
        assert!(r.failures.iter().all(|f| f == "signingCredential.untrusted"), "{format:?}: {:?}", r.failures);
        assert_eq!(r.actions, ["c2pa.created"], "{format:?}");
        assert_eq!(r.digital_source_types, [TRAINED]);
        assert_eq!(r.claim_generator.as_deref(), Some("sd-rs 0.1.0"));
        assert_eq!(r.signer.as_deref(), Some("sd-rs local C2PA signer"));
        assert_eq!(r.generation.as_ref().unwrap()["model_hash"], "85878e84c9");
        let trusted = inspect(&signed, Some(&root)).unwrap().unwrap();
        assert_eq!(trusted.state, "Trusted", "{format:?}: {trusted:?}");
        assert!(trusted.failures.is_empty(), "{format:?}: {:?}", trusted.failures);
        // the labels written before signing are still there
        let rep = sd_provenance::inspect::inspect_bytes("x", &signed).unwrap();
        assert_eq!(rep.parameters.unwrap().prompt, "a cat");
        assert!(rep.c2pa_manifest_present, "{format:?}");
    }
}

#[test]
fn a_flipped_byte_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = Identity::local(dir.path()).unwrap();
    for format in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp] {
        let mut signed = sign(&encoded(format), format, &claim(None), &id).unwrap();
        let at = signed.len() - 40; // inside the image data, past the manifest at the front
        signed[at] ^= 0x01;
        let r = inspect(&signed, None).unwrap().expect("a manifest");
        assert_eq!(r.state, "Invalid", "{format:?}: {r:?}");
        assert!(r.failures.iter().any(|f| f.contains("mismatch")), "{format:?}: {:?}", r.failures);
    }
}

/// An image signed by "another tool": the c2pa crate used directly, with a training-mining assertion.
fn other_tools_image(inference: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = Identity::local(dir.path()).unwrap();
    let id = Identity::from_pem(
        other.chain_pem.clone(),
        std::fs::read_to_string(dir.path().join("c2pa/signer-key.pem")).unwrap(),
        "camera".into(),
    )
    .unwrap();
    let def = serde_json::json!({
        "claim_generator_info": [{"name": "a camera app", "version": "2.0"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
                "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": {
                "c2pa.ai_inference": {"use": inference},
                "c2pa.ai_generative_training": {"use": "notAllowed"}}}},
        ],
    });
    let mut b = c2pa::Builder::from_context(c2pa::Context::new()).with_definition(def.to_string().as_str()).unwrap();
    let signer = c2pa::create_signer::from_keys(
        id.chain_pem.as_bytes(),
        std::fs::read(dir.path().join("c2pa/signer-key.pem")).unwrap().as_slice(),
        id.alg,
        None,
    )
    .unwrap();
    let mut out = Cursor::new(Vec::new());
    b.sign(signer.as_ref(), "image/png", &mut Cursor::new(encoded(OutputFormat::Png)), &mut out).unwrap();
    out.into_inner()
}

#[test]
fn an_init_image_with_credentials_becomes_the_parent_ingredient() {
    let parent = other_tools_image("allowed");
    check_inference_allowed(&parent, "photo.png").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = Identity::local(dir.path()).unwrap();
    let signed = sign(&encoded(OutputFormat::Jpeg), OutputFormat::Jpeg, &claim(Some(&parent)), &id).unwrap();
    let r = inspect(&signed, None).unwrap().unwrap();
    assert_eq!(r.state, "Valid", "{r:?}");
    assert_eq!(r.actions, ["c2pa.opened", "c2pa.edited"], "{r:?}");
    assert!(r.digital_source_types.iter().any(|t| t == COMPOSITE), "{r:?}");
    assert_eq!(r.ingredients, ["init image (parentOf, with its own manifest)"], "{r:?}");
}

#[test]
fn reserved_inference_is_refused() {
    let e = check_inference_allowed(&other_tools_image("notAllowed"), "photo.png").unwrap_err().to_string();
    assert!(e.contains("photo.png") && e.contains("c2pa.ai_inference: notAllowed"), "{e}");
    // images without credentials are not affected
    check_inference_allowed(&encoded(OutputFormat::Png), "plain.png").unwrap();
}

#[test]
fn processes_starting_together_share_one_local_identity() {
    // A test suite or a fleet of workers on a fresh machine: every caller gets the same identity, one made it.
    let dir = tempfile::tempdir().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| Identity::local(dir.path()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<_> = results.into_iter().map(|r| r.expect("every caller gets an identity")).collect();
    assert_eq!(ok.iter().filter(|(_, made)| made.is_some()).count(), 1, "exactly one caller made the CA");
    assert!(ok.iter().all(|(id, _)| id.chain_pem == ok[0].0.chain_pem), "all callers sign with the same chain");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("c2pa")], "no temporary folders are left behind");
}
