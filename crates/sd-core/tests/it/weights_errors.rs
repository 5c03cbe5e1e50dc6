//! Bad weight files and folders must give one clear error naming the file / tensor and what was expected vs found;
//! good ones (sharded, variants, the tiny SD1 UNet fixture) must load every tensor by name.

use sd_core::model_dir::{find_weights, ModelDir};
use sd_core::weights::{SafeTensorsFiles, VarBuilder};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const UNET: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1/unet/diffusion_pytorch_model.safetensors");

/// A safetensors file from raw parts: (name, dtype string, shape, data offsets) and the data section.
fn raw_file(dir: &Path, file: &str, tensors: &[(&str, &str, &[usize], [usize; 2])], data: &[u8]) -> PathBuf {
    let mut header = serde_json::Map::new();
    for (name, dtype, shape, offsets) in tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}));
    }
    let text = serde_json::to_string(&header).unwrap();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(data);
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A valid two-tensor file: `a` [2, 3] and `b` [4].
fn good_file(dir: &Path, file: &str) -> PathBuf {
    let data = f32_bytes(&(0..10).map(|i| i as f32).collect::<Vec<_>>());
    raw_file(dir, file, &[("a", "F32", &[2, 3], [0, 24]), ("b", "F32", &[4], [24, 40])], &data)
}

fn open_err(path: &Path) -> String {
    match VarBuilder::from_safetensors(&[path.to_path_buf()], Kind::Float, Device::Cpu) {
        Ok(_) => panic!("{} opened although it is broken", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn has_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks `{p}`:\n{msg}");
    }
}

#[test]
fn corrupt_header_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.safetensors");
    let mut bytes = 12u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\": nope }");
    std::fs::write(&path, bytes).unwrap();
    has_all(&open_err(&path), &["garbage.safetensors", "not a valid safetensors file", "JSON header"]);

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    has_all(&open_err(&tiny), &["tiny.safetensors", "too short"]);

    let html = dir.path().join("page.safetensors");
    std::fs::write(&html, b"<html><body>404 not found</body></html>").unwrap();
    has_all(&open_err(&html), &["page.safetensors", "not a valid safetensors file"]);
}

#[test]
fn truncated_data_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_file(dir.path(), "cut.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    has_all(&open_err(&path), &["cut.safetensors", "truncated"]);
}

#[test]
fn header_lying_about_offsets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = f32_bytes(&[0.0; 10]);
    // `b` overlaps `a`.
    let overlap = raw_file(
        dir.path(),
        "overlap.safetensors",
        &[("a", "F32", &[2, 3], [0, 24]), ("b", "F32", &[4], [8, 24])],
        &data,
    );
    has_all(&open_err(&overlap), &["overlap.safetensors", "`b`"]);
    // Shape says 6 floats but the byte range holds 4.
    let short = raw_file(dir.path(), "short.safetensors", &[("a", "F32", &[2, 3], [0, 16])], &data[..16]);
    has_all(&open_err(&short), &["short.safetensors", "shape and dtype do not match"]);
}

#[test]
fn missing_extra_and_misshaped_tensors_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_file(dir.path(), "model.safetensors");
    let vb = VarBuilder::from_safetensors(&[path], Kind::Float, Device::Cpu).unwrap();
    let block = vb.pp("block");
    let missing = block.get(&[3], "weight").unwrap();
    assert_eq!(missing.size(), vec![3], "placeholder keeps the requested shape");
    let wrong = vb.get(&[3, 2], "a").unwrap();
    assert_eq!(wrong.size(), vec![3, 2]);
    let err = vb.finish("TestModel", &[]).unwrap_err().to_string();
    has_all(
        &err,
        &[
            "cannot load TestModel from",
            "model.safetensors",
            "missing tensor `block.weight` (expected shape [3])",
            "tensor `a` has shape [2, 3], expected [3, 2]",
            "1 tensor(s) in the file were not used",
            "\n      b",
        ],
    );
    // Ignored names are not reported as unused.
    let vb = VarBuilder::from_safetensors(&[dir.path().join("model.safetensors")], Kind::Float, Device::Cpu).unwrap();
    let _a = vb.get(&[2, 3], "a").unwrap();
    let report = vb.finish("TestModel", &["b"]).unwrap();
    assert_eq!(report.loaded, 1);
}

#[test]
fn unsupported_dtypes_name_tensor_dtype_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // float8 (ComfyUI's fp8 files) is supported and widens exactly: e4m3fn bytes 0x38, 0x40, 0xB8, 0x00 are 1, 2, -1, 0
    let mut data = vec![0u8; 12];
    data.extend_from_slice(&[0x38, 0x40, 0xB8, 0x00]);
    let path = raw_file(
        dir.path(),
        "odd.safetensors",
        &[
            ("w32", "U32", &[1], [0, 4]),
            ("w16", "U16", &[2], [4, 8]),
            ("ok", "F32", &[1], [8, 12]),
            ("f8", "F8_E4M3", &[4], [12, 16]),
        ],
        &data,
    );
    let vb = VarBuilder::from_safetensors(std::slice::from_ref(&path), Kind::Float, Device::Cpu).unwrap();
    let _w32 = vb.get(&[1], "w32").unwrap();
    let _w16 = vb.get(&[2], "w16").unwrap();
    let _ok = vb.get(&[1], "ok").unwrap();
    let f8 = vb.get(&[4], "f8").unwrap();
    assert_eq!(Vec::<f32>::try_from(&f8).unwrap(), vec![1.0, 2.0, -1.0, 0.0]);
    let err = vb.finish("TestModel", &[]).unwrap_err().to_string();
    has_all(&err, &["odd.safetensors", "tensor `w32`", "U32", "tensor `w16`", "U16", "not supported"]);
    assert!(!err.contains("`f8`"), "{err}");
    let files = SafeTensorsFiles::open(&[path]).unwrap();
    let direct = files.load("w32").unwrap_err().to_string();
    has_all(&direct, &["`w32`", "odd.safetensors", "U32", "supported: F64, F32, F16, BF16, F8_E4M3"]);
}

#[test]
fn model_folder_pieces_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let err = ModelDir::open(root.to_str().unwrap()).unwrap_err().to_string();
    has_all(&err, &["model_index.json is missing", &root.display().to_string()]);

    std::fs::write(root.join("model_index.json"), r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [null, null]}"#).unwrap();
    let md = ModelDir::open(root.to_str().unwrap()).unwrap();
    let mut comps = md.components();
    comps.sort();
    assert_eq!(comps, vec!["unet", "vae"]);
    let err = md.component_weights("unet", None).unwrap_err().to_string();
    has_all(&err, &["missing the `unet/` folder"]);

    std::fs::create_dir(root.join("unet")).unwrap();
    let err = md.component_weights("unet", None).unwrap_err().to_string();
    has_all(&err, &["no weights in", "unet", "diffusion_pytorch_model.safetensors"]);
    let err = md.component_config("unet").unwrap_err().to_string();
    has_all(&err, &["has no config.json"]);

    std::fs::write(root.join("unet/diffusion_pytorch_model.bin"), b"pickle").unwrap();
    let err = md.component_weights("unet", None).unwrap_err().to_string();
    has_all(&err, &["only PyTorch .bin weights", "convert"]);

    std::fs::write(root.join("unet/config.json"), "{not json").unwrap();
    let err = format!("{:#}", md.component_config("unet").unwrap_err());
    has_all(&err, &["config.json", "not valid JSON"]);

    let file = root.join("unet/diffusion_pytorch_model.bin");
    let err = ModelDir::open(file.to_str().unwrap()).unwrap_err().to_string();
    has_all(&err, &["is a file, not a diffusers model folder"]);
}

#[test]
fn fp16_variant_selection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    good_file(d, "diffusion_pytorch_model.fp16.safetensors");
    // Only the variant exists: used whether or not it was asked for.
    assert!(find_weights(d, None).unwrap().ends_with("diffusion_pytorch_model.fp16.safetensors"));
    assert!(find_weights(d, Some("fp16")).unwrap().ends_with("diffusion_pytorch_model.fp16.safetensors"));
    good_file(d, "diffusion_pytorch_model.safetensors");
    // Both exist: the plain file unless fp16 is asked for.
    assert!(find_weights(d, None).unwrap().ends_with("diffusion_pytorch_model.safetensors"));
    assert!(find_weights(d, Some("fp16")).unwrap().ends_with("diffusion_pytorch_model.fp16.safetensors"));
    // An unknown variant falls back to the plain file.
    assert!(find_weights(d, Some("ema")).unwrap().ends_with("diffusion_pytorch_model.safetensors"));
    // transformers components are called model.safetensors.
    let te = tempfile::tempdir().unwrap();
    good_file(te.path(), "model.fp16.safetensors");
    assert!(find_weights(te.path(), Some("fp16")).unwrap().ends_with("model.fp16.safetensors"));
}

fn write_index(dir: &Path, name: &str, map: &[(&str, &str)]) -> PathBuf {
    let weight_map: serde_json::Map<String, serde_json::Value> =
        map.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map}).to_string())
        .unwrap();
    path
}

#[test]
fn sharded_index_loads_all_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw_file(
        d,
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        &[("x.weight", "F32", &[2], [0, 8])],
        &f32_bytes(&[1.0, 2.0]),
    );
    raw_file(
        d,
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        &[("y.weight", "F16", &[1], [0, 2])],
        &[0x00, 0x3c],
    );
    let index = write_index(
        d,
        "diffusion_pytorch_model.safetensors.index.json",
        &[
            ("x.weight", "diffusion_pytorch_model-00001-of-00002.safetensors"),
            ("y.weight", "diffusion_pytorch_model-00002-of-00002.safetensors"),
        ],
    );
    assert_eq!(find_weights(d, None).unwrap(), index);
    let vb = VarBuilder::from_safetensors(std::slice::from_ref(&index), Kind::Float, Device::Cpu).unwrap();
    let x = vb.get(&[2], "x.weight").unwrap();
    let y = vb.get(&[1], "y.weight").unwrap();
    assert_eq!(Vec::<f32>::try_from(&x).unwrap(), vec![1.0, 2.0]);
    assert_eq!(Vec::<f32>::try_from(&y).unwrap(), vec![1.0], "f16 shard converted to f32");
    assert_eq!(vb.finish("Sharded", &[]).unwrap().loaded, 2);

    // A shard named in the index but absent.
    let bad = write_index(d, "broken.safetensors.index.json", &[("z", "gone-00003.safetensors")]);
    has_all(&open_err(&bad), &["gone-00003.safetensors", "does not exist", "broken.safetensors.index.json"]);
    // An index without weight_map.
    let empty = d.join("empty.safetensors.index.json");
    std::fs::write(&empty, "{}").unwrap();
    has_all(&open_err(&empty), &["weight_map"]);
    // The same tensor in two shards.
    raw_file(d, "dup.safetensors", &[("x.weight", "F32", &[2], [0, 8])], &f32_bytes(&[3.0, 4.0]));
    let dup = write_index(
        d,
        "dup.safetensors.index.json",
        &[("x.weight", "dup.safetensors"), ("y", "diffusion_pytorch_model-00001-of-00002.safetensors")],
    );
    has_all(&open_err(&dup), &["`x.weight` appears in both", "dup.safetensors"]);
}

#[test]
fn tiny_sd1_unet_resolves_every_tensor_as_bf16() {
    let path = PathBuf::from(UNET);
    assert!(path.exists(), "fixture {} is missing (run scripts/fixtures/gen_00_tiny_models.py)", path.display());
    let files = SafeTensorsFiles::open(std::slice::from_ref(&path)).unwrap();
    let names: Vec<String> = files.names().map(String::from).collect();
    assert!(names.len() > 100, "the tiny UNet has {} tensors", names.len());
    let vb = VarBuilder::from_safetensors(&[path], Kind::BFloat16, Device::Cpu).unwrap();
    for name in &names {
        let entry = files.entry(name).unwrap();
        // Ask the way model code does: through nested prefixes.
        let (prefix, leaf) = name.rsplit_once('.').unwrap();
        let sub = prefix.split('.').fold(vb.clone(), |b, p| b / p);
        let t = sub.get(&entry.shape, leaf).unwrap();
        assert_eq!(t.kind(), Kind::BFloat16, "{name}");
        assert_eq!(t.size(), entry.shape, "{name}");
        let reference = files.load(name).unwrap().to_kind(Kind::BFloat16);
        assert!(t.equal(&reference), "{name}: converted values differ from a plain f32 → bf16 cast");
    }
    let report = vb.finish("UNet2DConditionModel", &[]).unwrap();
    assert_eq!(report.loaded, names.len());
    assert!(vb.problems().is_empty());
    // Same dtype: the loaded tensor is an exact copy.
    let vb32 = VarBuilder::from_safetensors(&[PathBuf::from(UNET)], Kind::Float, Device::Cpu).unwrap();
    let w = vb32.get(&files.entry("conv_in.weight").unwrap().shape, "conv_in.weight").unwrap();
    assert!(w.equal(&files.load("conv_in.weight").unwrap()));
    let _: Tensor = w;
}
