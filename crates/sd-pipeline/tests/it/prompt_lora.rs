//! LoRA merging vs diffusers `load_lora_weights` + `fuse_lora(lora_scale=0.8)` + `unload_lora_weights` on the
//! tiny SD1 model (fixtures/prompt/lora, made by scripts/fixtures/gen_70_prompt.py). Tolerance 1e-6 (f32).

use sd_core::weights::SafeTensorsFiles;
use sd_pipeline::prompt::lora::{load_lora, merge_lora, LoraTarget};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::Tensor;

fn fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures")).to_path_buf()
}

fn state_dict(path: &Path) -> HashMap<String, Tensor> {
    let files = SafeTensorsFiles::open(&[path.to_path_buf()]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    files.names().map(|n| (n.to_string(), files.load(n).unwrap())).collect()
}

#[test]
fn kohya_and_peft_merge_like_diffusers() {
    let reference = state_dict(&fixtures().join("prompt/lora/fused_reference.safetensors"));
    for format in ["kohya", "peft"] {
        let lora = load_lora(&fixtures().join(format!("prompt/lora/{format}.safetensors"))).unwrap();
        assert!(lora.unknown_keys.is_empty(), "{format}: {:?}", lora.unknown_keys);
        for (component, target, file) in [
            ("unet", LoraTarget::Unet, "models/sd1/unet/diffusion_pytorch_model.safetensors"),
            ("text_encoder", LoraTarget::TextEncoder, "models/sd1/text_encoder/model.safetensors"),
        ] {
            let original = state_dict(&fixtures().join(file));
            let mut weights: HashMap<String, Tensor> =
                original.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
            let report = merge_lora(&mut weights, target, &lora, 0.8).unwrap();
            assert!(report.unmatched.is_empty(), "{format}/{component}: {:?}", report.unmatched);
            let prefix = format!("{format}.{component}.");
            let want: BTreeSet<String> =
                reference.keys().filter_map(|k| k.strip_prefix(&prefix).map(String::from)).collect();
            let got: BTreeSet<String> = report.merged.iter().cloned().collect();
            assert_eq!(got, want, "{format}/{component}: merged tensors");
            for (name, w) in &weights {
                match reference.get(&format!("{prefix}{name}")) {
                    Some(r) => {
                        let diff = (w - r).abs().max().double_value(&[]);
                        assert!(diff <= 1e-6, "{format}/{component}/{name}: max |diff| {diff:e}");
                    }
                    None => assert!(w.equal(&original[name]), "{format}/{component}/{name} changed"),
                }
            }
        }
    }
}

#[test]
fn unknown_and_unmatched_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.safetensors");
    let t = |shape: &[i64]| Tensor::ones(shape, (tch::Kind::Float, tch::Device::Cpu));
    let tensors = vec![
        ("lora_unet_not_a_module.lora_down.weight".to_string(), t(&[1, 16])),
        ("lora_unet_not_a_module.lora_up.weight".to_string(), t(&[16, 1])),
        ("lora_unet_x.hada_w1_a".to_string(), t(&[2])),
    ];
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let lora = load_lora(&path).unwrap();
    assert_eq!(lora.unknown_keys, vec!["lora_unet_x.hada_w1_a".to_string()]);
    let mut weights = state_dict(&fixtures().join("models/sd1/unet/diffusion_pytorch_model.safetensors"));
    let report = merge_lora(&mut weights, LoraTarget::Unet, &lora, 1.0).unwrap();
    assert_eq!((report.merged.len(), report.unmatched), (0, vec!["not_a_module".to_string()]));
    std::fs::write(dir.path().join("bad.safetensors"), b"garbage").unwrap();
    let err = format!("{:#}", load_lora(&dir.path().join("bad.safetensors")).err().unwrap());
    assert!(err.contains("bad.safetensors"), "{err}");
}
