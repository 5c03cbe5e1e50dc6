//! Single-file ControlNets against diffusers (fixtures/controlnet_single_file/, from
//! scripts/fixtures/gen_97_controlnet_single_file.py): a tiny random ControlNet saved as a diffusers folder, as an
//! original-layout `.pth` (torch zip, no prefix) and as a ControlNet 1.0 style `.safetensors` bundle
//! (`control_model.` beside stand-in SD keys), both of which diffusers' `from_single_file` reads back bit-identical.
//! - conversion: every tensor equals the diffusers folder's exactly (names, shapes, dtypes, values), from all three
//!   single-file layouts;
//! - output: residuals of the converted model against diffusers' for one input, f32, max abs error ≤ 1e-5;
//! - bad files: truncated, misshaped, unknown layout, an absurd block number — errors naming the problem.

use sd_models::controlnet::ControlNetModel;
use sd_models::convert::{self, controlnet};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/controlnet_single_file"))
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn given() -> controlnet::GivenConfig {
    controlnet::GivenConfig::read(&dir().join("config.json")).unwrap()
}

#[test]
fn conversion_equals_the_diffusers_weights_exactly() {
    let want = read(&dir().join("diffusion_pytorch_model.safetensors"));
    let cases = [
        ("control_tiny.pth", controlnet::Layout::Original { prefix: "" }, 0),
        ("control_tiny_bundle.safetensors", controlnet::Layout::Original { prefix: "control_model." }, 6),
        ("diffusion_pytorch_model.safetensors", controlnet::Layout::Diffusers, 0),
    ];
    for (file, layout, ignored) in cases {
        let src = convert::open(&dir().join(file)).unwrap();
        let plan = controlnet::plan(src.as_ref(), Some(&given()), false).unwrap();
        assert_eq!(plan.layout, layout, "{file}");
        assert_eq!(plan.ignored.len(), ignored, "{file}: {:?}", plan.ignored);
        assert_eq!(plan.config, given().config, "{file}");
        let got = controlnet::load_tensors(src.as_ref(), &plan).unwrap();
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        let mut expected: Vec<&String> = want.keys().collect();
        expected.sort();
        assert_eq!(names, expected, "{file}");
        for (k, w) in &want {
            let g = &got[k];
            assert_eq!(g.kind(), w.kind(), "{file}: {k}");
            assert!(g.equal(w), "{file}: `{k}` differs from diffusers");
        }
    }
}

/// gen_88's ControlNet (two-level conditioning embedding, for the tiny SD1 pipeline) read back from its
/// original-layout `.pth` with the config beside it: the same tensors as its diffusers folder.
#[test]
fn the_tiny_pipelines_controlnet_round_trips() {
    let path = dir().join("for_tiny_sd1/control_sd1.pth");
    let config = controlnet::GivenConfig::beside(&path).unwrap().expect("config.json beside the file");
    let src = convert::open(&path).unwrap();
    let plan = controlnet::plan(src.as_ref(), Some(&config), false).unwrap();
    let got = controlnet::load_tensors(src.as_ref(), &plan).unwrap();
    let want = read(&dir().join("../models/controlnet-sd1/diffusion_pytorch_model.safetensors"));
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        assert!(got[k].equal(w), "`{k}` differs from diffusers");
    }
}

#[test]
fn the_config_beside_the_file_is_used_and_shapes_alone_name_what_is_missing() {
    // The file sits in a diffusers ControlNet folder: its config.json is the config, as `from_single_file(config=)`.
    assert!(controlnet::GivenConfig::beside(&dir().join("control_tiny.pth")).unwrap().is_some());
    // Without it, this tiny model's widths (8, 16) fit no original config: the error says what to supply.
    let src = convert::open(&dir().join("control_tiny.pth")).unwrap();
    let err = controlnet::plan(src.as_ref(), None, false).unwrap_err().to_string();
    assert!(err.contains("cannot infer") && err.contains("config.json"), "{err}");
    // A config describing another ControlNet is refused before any tensor is read.
    let mut other = given();
    other.config["block_out_channels"] = serde_json::json!([320, 640]);
    let err = controlnet::plan(src.as_ref(), Some(&other), false).unwrap_err().to_string();
    assert!(err.contains("block_out_channels") && err.contains("[8, 16]"), "{err}");
}

#[test]
fn residuals_of_the_converted_model_match_diffusers() {
    let t = read(&dir().join("forward.safetensors"));
    for file in ["control_tiny.pth", "control_tiny_bundle.safetensors"] {
        let cn = ControlNetModel::load(&dir().join(file), Kind::Float, Device::Cpu).unwrap();
        let out = tch::no_grad(|| cn.forward(&t["sample"], &Tensor::from(321.0f32), &t["ctx"], &t["cond"], 0.9, None))
            .unwrap();
        assert_eq!(out.down.len(), 4, "{file}");
        let mut worst: f64 = 0.0;
        for (i, d) in out.down.iter().enumerate() {
            let want = &t[&format!("down_{i}")];
            assert_eq!(d.size(), want.size(), "{file}: down residual {i}");
            worst = worst.max((d - want).abs().max().double_value(&[]));
        }
        worst = worst.max((&out.mid - &t["mid"]).abs().max().double_value(&[]));
        println!("{file}: max |Δ| over all residuals: {worst:.2e}");
        assert!(worst <= 1e-5, "{file}: residuals differ from diffusers: {worst}");
    }
}

/// The original-layout tensors of the fixture, for building bad files from.
fn original() -> Vec<(String, Tensor)> {
    let src = convert::open(&dir().join("control_tiny_bundle.safetensors")).unwrap();
    src.names()
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix("control_model.")?.to_string(), src.load(&n).unwrap())))
        .collect()
}

fn load_err(path: &Path) -> String {
    let err = ControlNetModel::load(path, Kind::Float, Device::Cpu).expect_err("a bad file must not load");
    format!("{err:#}")
}

#[test]
fn bad_files_give_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("config.json"), tmp.path().join("config.json")).unwrap();
    let save = |name: &str, tensors: &[(String, Tensor)]| {
        let p = tmp.path().join(name);
        sd_core::weights::save_safetensors(tensors, &p, None, sd_core::atomic::Overwrite::Allow).unwrap();
        p
    };
    // Truncated download.
    let bytes = std::fs::read(dir().join("control_tiny_bundle.safetensors")).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&cut);
    assert!(err.contains("cut.safetensors"), "{err}");
    let bytes = std::fs::read(dir().join("control_tiny.pth")).unwrap();
    let cut = tmp.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&cut);
    assert!(err.contains("cut.pth"), "{err}");
    // A zero convolution of the wrong shape: named with the shape expected.
    let mut t = original();
    for (k, v) in t.iter_mut() {
        if k == "zero_convs.1.0.weight" {
            *v = Tensor::zeros([8, 4, 1, 1], (Kind::Float, Device::Cpu));
        }
    }
    let err = load_err(&save("misshaped.safetensors", &t));
    assert!(err.contains("controlnet_down_blocks.1.weight") && err.contains("[8, 8, 1, 1]"), "{err}");
    // A layout that is no ControlNet.
    let err = load_err(&save("lora.safetensors", &[("lora_unet_down.alpha".into(), Tensor::from(1.0f32))]));
    assert!(err.contains("is not a ControlNet"), "{err}");
    // A block number far beyond any real model.
    let mut t = original();
    t.push(("zero_convs.4000000000.0.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
    let err = load_err(&save("absurd.safetensors", &t));
    assert!(err.contains("checkpoint block index limit of 1000"), "{err}");
    // A key under the control model that fits no rule.
    let mut t = original();
    t.push(("output_blocks.0.0.in_layers.0.weight".into(), Tensor::zeros([8], (Kind::Float, Device::Cpu))));
    let err = load_err(&save("unknown.safetensors", &t));
    assert!(err.contains("output_blocks.0.0.in_layers.0.weight") && err.contains("not part of a ControlNet"), "{err}");
}
