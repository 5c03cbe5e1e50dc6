//! Text encoders against transformers 5.24 (fixtures/clip/text_encoders.safetensors from gen_20_clip.py):
//! last_hidden_state, every hidden state, pooled output and projection within 1e-4 (f32, CPU), for both weight
//! layouts (transformers 5 fixtures, transformers 4 `text_model.` re-save in fixtures/clip/te_v4).

use sd_core::weights::SafeTensorsFiles;
use sd_core::VarBuilder;
use sd_models::clip::{ClipTextConfig, ClipTextModel};
use sd_test_support::{fixtures, max_abs_diff};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn reference() -> SafeTensorsFiles {
    SafeTensorsFiles::open_path(&fixtures().join("clip/text_encoders.safetensors")).expect("reference outputs")
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    assert!(d <= TOL, "{what}: max abs error {d:e} > {TOL:e}");
}

/// Run `model` on the reference ids stored under `prefix` and compare every output.
fn check(model: &ClipTextModel, refs: &SafeTensorsFiles, prefix: &str) {
    let ids = refs.load(&format!("{prefix}.ids")).unwrap();
    let out = model.forward(&ids).unwrap();
    assert_close(
        &format!("{prefix} last_hidden_state"),
        &out.last_hidden_state,
        &refs.load(&format!("{prefix}.last_hidden_state")).unwrap(),
    );
    assert_eq!(out.hidden_states.len() as i64, model.config().num_hidden_layers + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        assert_close(
            &format!("{prefix} hidden_states[{i}]"),
            h,
            &refs.load(&format!("{prefix}.hidden_states.{i}")).unwrap(),
        );
    }
    assert_close(&format!("{prefix} pooled"), &out.pooled, &refs.load(&format!("{prefix}.pooled")).unwrap());
    match refs.entry(&format!("{prefix}.text_embeds")) {
        Some(_) => {
            let want = refs.load(&format!("{prefix}.text_embeds")).unwrap();
            assert_close(&format!("{prefix} text_embeds"), out.text_embeds.as_ref().expect("projection output"), &want);
        }
        None => assert!(out.text_embeds.is_none(), "{prefix}: unexpected projection"),
    }
    // clip skip 0 is the ordinary output.
    assert_close("clip skip 0", &model.clip_skip_hidden(&out, 0).unwrap(), &out.last_hidden_state);
}

fn load(rel: &str) -> ClipTextModel {
    ClipTextModel::load(&fixtures().join(rel), Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{rel}: {e:#}"))
}

#[test]
fn sd1_text_encoder_transformers5_layout() {
    check(&load("models/sd1/text_encoder"), &reference(), "sd1");
}

#[test]
fn sd1_text_encoder_transformers4_layout() {
    let model = load("clip/te_v4");
    assert!(!model.has_projection());
    check(&model, &reference(), "sd1");
}

#[test]
fn sd2_text_encoder_gelu() {
    check(&load("models/sd2/text_encoder"), &reference(), "sd2");
}

#[test]
fn sdxl_text_encoders_with_and_without_projection() {
    let refs = reference();
    check(&load("models/sdxl/text_encoder"), &refs, "sdxl1");
    let two = load("models/sdxl/text_encoder_2");
    assert!(two.has_projection());
    check(&two, &refs, "sdxl2");
}

/// Configs newer than transformers PR #24773 pool at the first `eos_token_id`, not at argmax(ids).
#[test]
fn pooling_at_first_eos_token() {
    let refs = reference();
    let dir = fixtures().join("models/sd1/text_encoder");
    let mut cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.eos_token_id = Some(300);
    let vb = VarBuilder::from_safetensors(&[dir.join("model.safetensors")], Kind::Float, Device::Cpu).unwrap();
    let model = ClipTextModel::from_varbuilder(&vb, &cfg, false).unwrap();
    vb.finish("text encoder", &[]).unwrap();
    let out = model.forward(&refs.load("sd1_eos300.ids").unwrap()).unwrap();
    assert_close("pooled at first eos", &out.pooled, &refs.load("sd1_eos300.pooled").unwrap());
}

/// Copy a fixture encoder into a temp folder with an edited config.json.
fn edited_copy(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixtures().join("models/sd1/text_encoder");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match ClipTextModel::load(dir, Kind::Float, Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unsupported_activation_names_the_field() {
    let dir = edited_copy(|c| c["hidden_act"] = "swiglu".into());
    let msg = load_err(dir.path());
    assert!(msg.contains("hidden_act") && msg.contains("swiglu"), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn wrong_width_names_tensor_expected_and_found() {
    let dir = edited_copy(|c| c["intermediate_size"] = 40.into());
    let msg = load_err(dir.path());
    assert!(msg.contains("encoder.layers.0.mlp.fc1.weight"), "{msg}");
    assert!(msg.contains("[37, 16]") && msg.contains("[40, 16]"), "{msg}");
}

#[test]
fn bad_ids_are_errors() {
    let model = load("models/sd1/text_encoder");
    let too_big = Tensor::from_slice(&[1512i64, 5000, 1513]).view([1, 3]);
    let msg = format!("{:#}", model.forward(&too_big).err().expect("out of range"));
    assert!(msg.contains("out of range") && msg.contains("5000"), "{msg}");
    let too_long = Tensor::zeros([1, 78], (Kind::Int64, Device::Cpu));
    let msg = format!("{:#}", model.forward(&too_long).err().expect("too long"));
    assert!(msg.contains("78") && msg.contains("max_position_embeddings"), "{msg}");
    let floats = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
    assert!(model.forward(&floats).is_err());
}
