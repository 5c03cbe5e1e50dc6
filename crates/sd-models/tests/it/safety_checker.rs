//! StableDiffusionSafetyChecker against diffusers 0.42.1 + transformers 5.24 (fixtures/clip/safety from
//! gen_20_clip.py): preprocessed pixels within 1e-5, scores within 1e-4, identical flags, in both weight
//! layouts (transformers 5 as saved; transformers 4 `vision_model.vision_model.` as hub checkpoints have it).

use sd_core::atomic::Overwrite;
use sd_core::weights::{save_safetensors, SafeTensorsFiles};
use sd_models::clip::ClipImageProcessor;
use sd_models::safety::{black_out, SafetyChecker};
use sd_test_support::{fixtures, max_abs_diff};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn expected() -> SafeTensorsFiles {
    SafeTensorsFiles::open_path(&fixtures().join("clip/safety/expected.safetensors")).expect("safety references")
}

fn expected_flags() -> Vec<bool> {
    let text = std::fs::read_to_string(fixtures().join("clip/safety/expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["has_nsfw_concepts"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect()
}

fn check_against_diffusers(root: &Path) {
    let refs = expected();
    let checker = SafetyChecker::load(root, Kind::Float, Device::Cpu).unwrap().expect("a safety checker");
    let images = refs.load("images").unwrap();
    let d = max_abs_diff(&checker.image_embeds(&images).unwrap(), &refs.load("image_embeds").unwrap());
    assert!(d <= 1e-4, "image embeds: max abs error {d:e}");
    let verdicts = checker.check(&images).unwrap();
    let flags: Vec<bool> = verdicts.iter().map(|v| v.flagged).collect();
    assert_eq!(flags, expected_flags());
    assert!(flags.contains(&true) && flags.contains(&false));
    for (key, pick) in [("concept_scores", 0), ("special_scores", 1)] {
        let want = refs.load(key).unwrap();
        let rows: Vec<Tensor> = verdicts
            .iter()
            .map(|v| Tensor::from_slice(if pick == 0 { &v.concept_scores } else { &v.special_scores }))
            .collect();
        let d = max_abs_diff(&Tensor::stack(&rows, 0), &want);
        assert!(d <= 1e-4, "{key}: max abs error {d:e}");
    }
    let blacked = black_out(&images, &verdicts).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        let sum = blacked.get(i as i64).abs().sum(Kind::Double).double_value(&[]);
        assert_eq!(sum == 0.0, v.flagged, "image {i}");
    }
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    let refs = expected();
    let p = ClipImageProcessor::from_file(&fixtures().join("clip/safety/feature_extractor/preprocessor_config.json"))
        .unwrap();
    let pixels = p.preprocess(&refs.load("images").unwrap()).unwrap();
    let d = max_abs_diff(&pixels, &refs.load("pixel_values").unwrap());
    assert!(d <= 1e-5, "pixel_values: max abs error {d:e}");
}

#[test]
fn safety_checker_transformers5_layout() {
    check_against_diffusers(&fixtures().join("clip/safety"));
}

/// Copy the fixture checker with its keys renamed to the transformers-4 layout.
#[test]
fn safety_checker_transformers4_layout() {
    let src = fixtures().join("clip/safety");
    let root = tempfile::tempdir().unwrap();
    let sc = root.path().join("safety_checker");
    std::fs::create_dir_all(&sc).unwrap();
    std::fs::create_dir_all(root.path().join("feature_extractor")).unwrap();
    std::fs::copy(
        src.join("feature_extractor/preprocessor_config.json"),
        root.path().join("feature_extractor/preprocessor_config.json"),
    )
    .unwrap();
    std::fs::copy(src.join("safety_checker/config.json"), sc.join("config.json")).unwrap();
    let files = SafeTensorsFiles::open_path(&src.join("safety_checker/model.safetensors")).unwrap();
    let mut renamed: Vec<(String, Tensor)> = files
        .names()
        .map(|n| {
            let new = match n.strip_prefix("vision_model.") {
                Some(rest) => format!("vision_model.vision_model.{rest}"),
                None => n.to_string(),
            };
            (new, files.load(n).unwrap())
        })
        .collect();
    renamed.push((
        "vision_model.vision_model.embeddings.position_ids".into(),
        Tensor::arange(17, (Kind::Int64, Device::Cpu)).view([1, 17]),
    ));
    save_safetensors(&renamed, &sc.join("model.safetensors"), None, Overwrite::Refuse).unwrap();
    check_against_diffusers(root.path());
}

#[test]
fn models_without_a_checker_give_none() {
    assert!(SafetyChecker::load(&fixtures().join("models/sd1"), Kind::Float, Device::Cpu).unwrap().is_none());
}

fn broken_copy(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixtures().join("clip/safety");
    let root = tempfile::tempdir().unwrap();
    for f in ["safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json"] {
        std::fs::create_dir_all(root.path().join(f).parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), root.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("safety_checker/config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(root.path().join("safety_checker/config.json"), cfg.to_string()).unwrap();
    root
}

fn load_err(root: &Path) -> String {
    match SafetyChecker::load(root, Kind::Float, Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", root.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_configs_and_weights_are_named() {
    let root = broken_copy(|c| c["vision_config"]["hidden_act"] = "mish".into());
    let msg = load_err(root.path());
    assert!(msg.contains("hidden_act") && msg.contains("mish"), "{msg}");
    let root = broken_copy(|c| c["projection_dim"] = 24.into());
    let msg = load_err(root.path());
    assert!(msg.contains("visual_projection.weight") && msg.contains("[16, 32]") && msg.contains("[24, 32]"), "{msg}");
    let root = broken_copy(|c| c["vision_config"]["image_size"] = 64.into());
    let msg = load_err(root.path());
    assert!(msg.contains("image_size"), "{msg}");
}

#[test]
fn bad_images_are_errors() {
    let checker = SafetyChecker::load(&fixtures().join("clip/safety"), Kind::Float, Device::Cpu).unwrap().unwrap();
    assert!(checker.check(&Tensor::zeros([2, 4, 32, 32], (Kind::Float, Device::Cpu))).is_err());
    assert!(checker.check(&Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu))).is_err());
}
