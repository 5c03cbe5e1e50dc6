//! float8 single files as ComfyUI users have them (fixtures/sd3_fp8/, from scripts/fixtures/gen_94_sd3_single_file_fp8.py: the
//! tiny SD3 file of fixtures/sd3_single_file with its MMDiT and T5 matrix weights in float8_e4m3fn):
//! - plain float8: every converted tensor equals what diffusers' `from_single_file` loads from the same file
//!   (sha256 of the f32 bytes: exact);
//! - ComfyUI's legacy `scaled_fp8` and per-layer `comfy_quant` layouts: the scales disappear from the tensor list and
//!   every weight equals diffusers' load of ComfyUI's dequantization (float8 widened to f32, times the scale): exact;
//! - a conversion keeps plain float8 as float8 and writes dequantized weights as bf16 (f32 with `--dtype f32`);
//! - other quantizations (nvfp4), per-channel scales, scales without weights and unreadable configs are refused by
//!   name.

use super::sd3_single_file::compare;
use sd_core::weights::SafeTensorsFiles;
use sd_models::convert::{self, sd3, writer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_fp8"))
}

fn config() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/sd3_single_file/config"))
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn quantized_count() -> usize {
    expected()["quantized_tensors"].as_u64().unwrap() as usize
}

#[test]
fn plain_float8_file_converts_to_what_diffusers_loads() {
    let src = convert::open(&dir().join("plain.safetensors")).unwrap();
    let fp8 = src.names().iter().filter(|n| src.kind(n) == Some(Kind::Float8e4m3fn)).count();
    assert_eq!(fp8, quantized_count());
    let plan = sd3::plan(src.as_ref(), Some(&config()), false).unwrap();
    assert!(plan.unknown.is_empty(), "{:?}", plan.unknown);
    let got = sd3::load_tensors(src.as_ref(), &plan).unwrap();
    let n = compare(&got, &expected()["plain"], "plain float8");
    assert!(n > 150, "{n}");
}

#[test]
fn scaled_layouts_read_as_weight_times_scale() {
    for file in ["scaled", "per_layer"] {
        let src = convert::open(&dir().join(format!("{file}.safetensors"))).unwrap();
        let names = src.names();
        let bookkeeping = ["scaled_fp8", ".scale_weight", ".scale_input", ".weight_scale", ".comfy_quant"];
        assert!(!names.iter().any(|n| bookkeeping.iter().any(|b| n.ends_with(b))), "{file}: scales still listed");
        // the fixture's other tensors are f32: the dequantized weights are exactly the bf16 ones
        let dequantized = names.iter().filter(|n| src.kind(n) == Some(Kind::BFloat16)).count();
        assert_eq!(dequantized, quantized_count(), "{file}");
        let plan = sd3::plan(src.as_ref(), Some(&config()), false).unwrap();
        assert!(plan.unknown.is_empty(), "{file}: {:?}", plan.unknown);
        assert_eq!(plan.ignored.len(), 1, "{file}: {:?}", plan.ignored);
        let got = sd3::load_tensors(src.as_ref(), &plan).unwrap();
        let n = compare(&got, &expected()["scaled"], file);
        assert!(n > 150, "{file}: {n}");
    }
}

fn stored_dtypes(folder: &Path) -> std::collections::BTreeSet<String> {
    let f = SafeTensorsFiles::open(&[folder.join("transformer/diffusion_pytorch_model.safetensors")]).unwrap();
    let names: Vec<String> = f.names().map(String::from).collect();
    names.iter().map(|n| format!("{:?}", f.entry(n).unwrap().dtype)).collect()
}

#[test]
fn conversion_keeps_float8_and_writes_dequantized_weights_as_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, dtype, want) in [
        ("plain", None, vec!["F32", "F8_E4M3"]),
        ("scaled", None, vec!["BF16", "F32"]),
        ("per_layer", Some(Kind::Float), vec!["F32"]),
        ("plain", Some(Kind::BFloat16), vec!["BF16"]),
    ] {
        let src = convert::open(&dir().join(format!("{file}.safetensors"))).unwrap();
        let plan = sd3::plan(src.as_ref(), Some(&config()), false).unwrap();
        let out = tmp.path().join(format!("{file}-{dtype:?}"));
        let opts =
            writer::WriteOptions { dtype, overwrite: false, config_dir: Some(config()), vocab: None, pipeline: true };
        writer::write_sd3_folder(&plan, src.as_ref(), &out, &opts, |_, _, _| {}).unwrap();
        let got: Vec<String> = stored_dtypes(&out).into_iter().collect();
        assert_eq!(got, want, "{file} with {dtype:?}");
    }
}

fn write(path: &Path, tensors: &[(&str, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

fn json_bytes(s: &str) -> Tensor {
    Tensor::from_slice(s.as_bytes())
}

#[test]
fn unsupported_quantizations_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let w = || Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
    let one = || Tensor::from(0.5f32);
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "nvfp4",
            vec![("a.weight", w()), ("a.comfy_quant", json_bytes(r#"{"format": "nvfp4"}"#)), ("a.weight_scale", one())],
            &["`a`", "nvfp4", "float8_e4m3fn"],
        ),
        (
            "per-channel",
            vec![
                ("scaled_fp8", Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))),
                ("a.weight", w()),
                ("a.scale_weight", Tensor::ones([2], (Kind::Float, tch::Device::Cpu))),
            ],
            &["a.scale_weight", "[2]", "per-tensor"],
        ),
        (
            "orphan scale",
            vec![("scaled_fp8", Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))), ("b.scale_weight", one())],
            &["b.scale_weight", "no weight `b.weight`"],
        ),
        (
            "not json",
            vec![("a.weight", w()), ("a.comfy_quant", json_bytes("float8")), ("a.weight_scale", one())],
            &["a.comfy_quant", "not JSON"],
        ),
        (
            "no scale",
            vec![("a.weight", w()), ("a.comfy_quant", json_bytes(r#"{"format": "float8_e4m3fn"}"#))],
            &["`a`", "a.weight_scale"],
        ),
        (
            "config too long",
            vec![("a.weight", w()), ("a.comfy_quant", Tensor::zeros([5000], (Kind::Uint8, tch::Device::Cpu)))],
            &["a.comfy_quant", "4096 bytes"],
        ),
    ];
    for (what, tensors, needles) in cases {
        let path = tmp.path().join(format!("{}.safetensors", what.replace(' ', "_")));
        write(&path, &tensors);
        let e = format!("{:#}", convert::open(&path).err().unwrap_or_else(|| panic!("{what}: accepted")));
        for n in needles {
            assert!(e.contains(n), "{what}: {e:?} should mention {n:?}");
        }
    }
}

/// The UNet families read float8 files through the same reader: an SDXL single file (fixtures/convert/sdxl, whose
/// conversion is checked against diffusers in `convert.rs`) with every float tensor stored as float8_e4m3fn converts
/// to exactly the float8 rounding of its ordinary conversion — the renames, 1×1-conv reshapes, OpenCLIP transposes
/// and q/k/v row splits all carry float8 through unchanged.
#[test]
fn sdxl_float8_file_converts_like_its_float32_file() {
    let fixture = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/convert/sdxl.safetensors"));
    let opts = convert::ConvertOptions {
        config_dir: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sdxl"))),
        ..Default::default()
    };
    let f32_src = convert::open(&fixture).unwrap();
    let tensors: Vec<(String, Tensor)> = f32_src
        .names()
        .into_iter()
        .map(|n| {
            let t = f32_src.load(&n).unwrap();
            let t = if t.is_floating_point() { t.to_kind(Kind::Float8e4m3fn) } else { t };
            (n, t)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sdxl_fp8.safetensors");
    sd_core::weights::save_safetensors(&tensors, &path, None, sd_core::atomic::Overwrite::Refuse).unwrap();
    let want = convert::convert_checkpoint(f32_src.as_ref(), &opts).unwrap();
    let got = convert::convert_checkpoint(convert::open(&path).unwrap().as_ref(), &opts).unwrap();
    let mut n = 0;
    for (w, g) in [
        (&want.unet, &got.unet),
        (&want.vae, &got.vae),
        (&want.text_encoder, &got.text_encoder),
        (&want.text_encoder_2, &got.text_encoder_2),
    ] {
        assert_eq!(w.len(), g.len());
        for ((wn, wt), (gn, gt)) in w.iter().zip(g.iter()) {
            assert_eq!(wn, gn);
            if wt.is_floating_point() {
                assert_eq!(gt.kind(), Kind::Float8e4m3fn, "{gn}");
                let exact = wt.to_kind(Kind::Float8e4m3fn).to_kind(Kind::Float).equal(&gt.to_kind(Kind::Float));
                assert!(exact, "{gn} differs from the float8 rounding of the f32 conversion");
                n += 1;
            }
        }
    }
    assert!(n > 300, "{n}");
    // and a model loading such weights widens them exactly, also straight into a channels-last convolution weight
    let files = SafeTensorsFiles::open(&[path]).unwrap();
    let names: Vec<String> = files.names().map(String::from).collect();
    let conv = names.iter().find(|n| files.entry(n).unwrap().shape.len() == 4).unwrap();
    let plain = files.load(conv).unwrap().to_kind(Kind::BFloat16);
    assert!(files.load_as(conv, Kind::BFloat16).unwrap().equal(&plain));
    assert!(files.load_as_channels_last(conv, Kind::BFloat16).unwrap().equal(&plain));
}
