//! LoRA files merged into model weights (A1111 `extensions-builtin/Lora/networks.py`; diffusers
//! `load_lora_weights` + `fuse_lora` as the oracle): `W += multiplier · (alpha / rank) · up @ down`.
//!
//! Key layouts read:
//! - kohya / A1111: `lora_unet_<module>`, `lora_te_<module>` (SDXL: `lora_te1_`, `lora_te2_`) with
//!   `.lora_down.weight`, `.lora_up.weight` and an optional `.alpha` (absent = rank, scale 1). `<module>` is the
//!   diffusers/transformers module path with `.` written as `_`, so it is matched against the model's own weight
//!   names the same way. Linear, 1×1 conv and LoCon 3×3 conv layers are merged.
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` + `.lora_B.weight` (also `text_encoder.`, `text_encoder_2.`,
//!   or no prefix for a UNet-only file; `transformer.` for SD3's transformer), and the older `.lora.down.weight` / `.lora.up.weight`; optional
//!   `<module>.alpha`.
//!
//! Not handled: SDXL kohya files whose UNet modules use the original LDM names (`lora_unet_input_blocks_…`),
//! LyCORIS variants (LoHa, LoKr, DoRA `dora_scale`), and LoRAs stored as pickles. Their keys are reported as
//! unknown or unmatched, never silently dropped.

use anyhow::{bail, Context, Result};
use sd_core::weights::SafeTensorsFiles;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Which model component a LoRA layer patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Unet,
    TextEncoder,
    TextEncoder2,
    /// SD3's `SD3Transformer2DModel` (diffusers' `transformer.` prefix).
    Transformer,
}

/// One low-rank update: `up [out, rank, …] @ down [rank, in, …]`.
pub struct LoraLayer {
    pub target: LoraTarget,
    /// The module path with `.` → `_` (kohya's spelling), e.g. `down_blocks_1_attentions_0_proj_in`.
    pub module: String,
    pub down: Tensor,
    pub up: Tensor,
    pub alpha: Option<f64>,
}

pub struct Lora {
    pub path: PathBuf,
    pub layers: Vec<LoraLayer>,
    /// Keys of the file that belong to no recognised layout.
    pub unknown_keys: Vec<String>,
}

/// What a merge did.
#[derive(Debug, Default)]
pub struct LoraMergeReport {
    /// Weight names changed.
    pub merged: Vec<String>,
    /// LoRA modules for this component with no matching weight (or a weight of another shape).
    pub unmatched: Vec<String>,
}

#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

/// Split a key into (target, module in `_` spelling, role) for every supported layout.
fn classify(key: &str) -> Option<(LoraTarget, String, &'static str)> {
    let kohya = [
        ("lora_unet_", LoraTarget::Unet),
        ("lora_te1_", LoraTarget::TextEncoder),
        ("lora_te2_", LoraTarget::TextEncoder2),
        ("lora_te_", LoraTarget::TextEncoder),
    ];
    for (prefix, target) in kohya {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, role) in [(".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")] {
                if let Some(module) = rest.strip_suffix(suffix) {
                    return Some((target, module.to_string(), role));
                }
            }
            return None;
        }
    }
    let (target, rest) = if let Some(r) = key.strip_prefix("transformer.") {
        (LoraTarget::Transformer, r)
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (LoraTarget::TextEncoder2, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (LoraTarget::TextEncoder, r)
    } else {
        (LoraTarget::Unet, key.strip_prefix("unet.").unwrap_or(key))
    };
    let suffixes = [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".alpha", "alpha"),
    ];
    suffixes.iter().find_map(|(suffix, role)| rest.strip_suffix(suffix).map(|m| (target, m.replace('.', "_"), *role)))
}

/// Read a LoRA `.safetensors` file.
pub fn load_lora(path: &Path) -> Result<Lora> {
    let files =
        SafeTensorsFiles::open(&[path.to_path_buf()]).with_context(|| format!("LoRA file {}", path.display()))?;
    let mut parts: BTreeMap<(LoraTarget, String), Parts> = BTreeMap::new();
    let mut unknown_keys = Vec::new();
    for key in files.names() {
        let Some((target, module, role)) = classify(key) else {
            unknown_keys.push(key.to_string());
            continue;
        };
        let t = files.load(key)?.to_kind(Kind::Float);
        let entry = parts.entry((target, module)).or_default();
        match role {
            "down" => entry.down = Some(t),
            "up" => entry.up = Some(t),
            _ => {
                entry.alpha = Some(
                    t.f_double_value(&[]).with_context(|| format!("{}: `{key}` is not a scalar", path.display()))?,
                )
            }
        }
    }
    let mut layers = Vec::new();
    for ((target, module), p) in parts {
        match (p.down, p.up) {
            (Some(down), Some(up)) => layers.push(LoraLayer { target, module, down, up, alpha: p.alpha }),
            _ => unknown_keys.push(format!("{module} (incomplete: needs both down/A and up/B)")),
        }
    }
    if layers.is_empty() {
        bail!(
            "{} holds no LoRA layers this program can read ({} unrecognised keys)",
            path.display(),
            unknown_keys.len()
        );
    }
    Ok(Lora { path: path.to_path_buf(), layers, unknown_keys })
}

/// The `_` spelling of a weight's module, as kohya names it. Text encoders are matched under `text_model_…`
/// whichever transformers layout the weights use.
fn module_key(weight_name: &str, target: LoraTarget) -> Option<String> {
    let module = weight_name.strip_suffix(".weight")?;
    let flat = module.replace('.', "_");
    Some(match target {
        LoraTarget::Unet | LoraTarget::Transformer => flat,
        _ if flat.starts_with("text_model_") => flat,
        _ => format!("text_model_{flat}"),
    })
}

fn delta(layer: &LoraLayer, shape: &[i64]) -> Result<Tensor> {
    let rank = layer.down.size()[0];
    let (down, up) = (layer.down.f_flatten(1, -1)?, layer.up.f_flatten(1, -1)?);
    if up.size()[1] != rank {
        bail!("LoRA module {}: up has inner size {} but down has rank {rank}", layer.module, up.size()[1]);
    }
    let d = up.f_matmul(&down)?;
    let numel: i64 = shape.iter().product();
    if d.numel() as i64 != numel || d.size()[0] != shape[0] {
        bail!("LoRA module {}: update of shape {:?} does not fit weight {shape:?}", layer.module, d.size());
    }
    let scale = layer.alpha.map(|a| a / rank as f64).unwrap_or(1.0);
    Ok(d.f_reshape(shape)? * scale)
}

/// Merge `lora`'s layers for `target` into `weights` (a component's state dict, diffusers names) with
/// `multiplier` (A1111's `<lora:name:multiplier>`, diffusers' `lora_scale`).
pub fn merge_lora(
    weights: &mut HashMap<String, Tensor>,
    target: LoraTarget,
    lora: &Lora,
    multiplier: f64,
) -> Result<LoraMergeReport> {
    let index: HashMap<String, String> =
        weights.keys().filter_map(|k| module_key(k, target).map(|m| (m, k.clone()))).collect();
    let mut report = LoraMergeReport::default();
    for layer in lora.layers.iter().filter(|l| l.target == target) {
        let Some(name) = index.get(&layer.module) else {
            report.unmatched.push(layer.module.clone());
            continue;
        };
        let w = &weights[name];
        let update = match delta(layer, &w.size()) {
            Ok(d) => d,
            Err(e) => {
                report.unmatched.push(format!("{} ({e})", layer.module));
                continue;
            }
        };
        let merged = (w.to_kind(Kind::Float) + update.to_device(w.device()) * multiplier).to_kind(w.kind());
        weights.insert(name.clone(), merged);
        report.merged.push(name.clone());
    }
    report.merged.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layouts() {
        let k = classify("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight").unwrap();
        assert_eq!((k.0, k.1.as_str(), k.2), (LoraTarget::Unet, "down_blocks_0_attentions_0_proj_in", "down"));
        let k = classify("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha").unwrap();
        assert_eq!((k.0, k.2), (LoraTarget::TextEncoder2, "alpha"));
        let k = classify("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
        assert_eq!(
            (k.0, k.1.as_str(), k.2),
            (LoraTarget::TextEncoder, "text_model_encoder_layers_0_self_attn_q_proj", "up")
        );
        let k = classify("transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight").unwrap();
        assert_eq!((k.0, k.1.as_str()), (LoraTarget::Transformer, "transformer_blocks_0_attn_to_out_0"));
        let k = classify("unet.mid_block.attentions.0.proj_out.lora.down.weight").unwrap();
        assert_eq!((k.0, k.1.as_str()), (LoraTarget::Unet, "mid_block_attentions_0_proj_out"));
        assert!(classify("lora_unet_x.hada_w1_a").is_none());
        assert_eq!(
            module_key("encoder.layers.0.self_attn.q_proj.weight", LoraTarget::TextEncoder).unwrap(),
            "text_model_encoder_layers_0_self_attn_q_proj"
        );
    }
}
