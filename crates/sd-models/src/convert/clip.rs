//! Text encoders in LDM checkpoints → transformers `CLIPTextModel` / `CLIPTextModelWithProjection` names.
//!
//! * CLIP ViT-L/14 (SD1, SDXL's first encoder) is stored in transformers layout already under
//!   `cond_stage_model.transformer.` / `conditioner.embedders.0.transformer.`: only the prefix goes.
//! * OpenCLIP ViT-H (SD2, `cond_stage_model.model.`) and ViT-bigG (SDXL `conditioner.embedders.1.model.`,
//!   refiner `conditioner.embedders.0.model.`) use open_clip names: fused `in_proj_weight`/`in_proj_bias` are
//!   split into q/k/v, `text_projection` (applied as `x @ P`) becomes a Linear weight `P^T`, and resblocks at or
//!   beyond the config's `num_hidden_layers` are left out (SD2 conditions on the penultimate layer, so diffusers'
//!   text encoder has 23 of the 24 layers) — see diffusers `convert_open_clip_checkpoint`.
//!
//! Output names keep transformers 4's `text_model.` prefix, which is what hub SD repos contain and what both
//! transformers 4 and 5 load.

use super::plan::{Component, Item, Op};
use super::source::TensorSource;
use anyhow::{anyhow, Result};
use std::collections::BTreeSet;

/// Plan a transformers-layout CLIP under `prefix` (which ends in `transformer.`).
pub fn plan_clip_l(
    src: &dyn TensorSource,
    names: &[String],
    prefix: &str,
    component: Component,
    used: &mut BTreeSet<String>,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for key in names {
        let Some(local) = key.strip_prefix(prefix) else { continue };
        if local.ends_with("embeddings.position_ids") {
            continue; // a buffer of 0..77, recomputed by transformers (ignore table)
        }
        let shape = src.shape(key).ok_or_else(|| anyhow!("internal: no shape for {key}"))?;
        used.insert(key.clone());
        items.push(Item::new(component, local.to_string(), 0, key, Op::Copy, &shape)?);
    }
    Ok(items)
}

/// Plan an OpenCLIP text tower under `prefix` (ending in `model.`). `layers` = text encoder layers to keep;
/// `projection` = whether the target has a `text_projection` (CLIPTextModelWithProjection).
#[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
pub fn plan_open_clip(
    src: &dyn TensorSource,
    names: &[String],
    prefix: &str,
    component: Component,
    layers: usize,
    projection: bool,
    used: &mut BTreeSet<String>,
    unknown: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let shape_of = |k: &str| src.shape(k).ok_or_else(|| anyhow!("internal: no shape for {k}"));
    for key in names {
        let Some(local) = key.strip_prefix(prefix) else { continue };
        let fixed = match local {
            "positional_embedding" => Some(("text_model.embeddings.position_embedding.weight", Op::Copy)),
            "token_embedding.weight" => Some(("text_model.embeddings.token_embedding.weight", Op::Copy)),
            "ln_final.weight" => Some(("text_model.final_layer_norm.weight", Op::Copy)),
            "ln_final.bias" => Some(("text_model.final_layer_norm.bias", Op::Copy)),
            "text_projection" if projection => Some(("text_projection.weight", Op::Transpose)),
            _ => None,
        };
        if let Some((name, op)) = fixed {
            used.insert(key.clone());
            items.push(Item::new(component, name.to_string(), 0, key, op, &shape_of(key)?)?);
            continue;
        }
        let Some(rest) = local.strip_prefix("transformer.resblocks.") else { continue };
        let Some((i, rest)) = rest.split_once('.').and_then(|(n, r)| Some((n.parse::<usize>().ok()?, r))) else {
            unknown.push(key.clone());
            continue;
        };
        if i >= layers {
            continue; // layers the diffusers text encoder does not have (ignore table: unused final layers)
        }
        let base = format!("text_model.encoder.layers.{i}");
        let shape = shape_of(key)?;
        let mut push = |name: String, op: Op| -> Result<()> {
            items.push(Item::new(component, name, 0, key, op, &shape)?);
            Ok(())
        };
        match rest {
            "attn.in_proj_weight" | "attn.in_proj_bias" => {
                let what = if rest.ends_with("weight") { "weight" } else { "bias" };
                let dim = shape.first().copied().unwrap_or(0) / 3;
                for (j, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    push(format!("{base}.self_attn.{p}.{what}"), Op::Rows { start: j as i64 * dim, len: dim })?;
                }
            }
            _ => {
                let Some(name) = resblock_name(rest) else {
                    unknown.push(key.clone());
                    continue;
                };
                push(format!("{base}.{name}"), Op::Copy)?;
            }
        }
        used.insert(key.clone());
    }
    Ok(items)
}

fn resblock_name(rest: &str) -> Option<String> {
    let (head, tail) = rest.rsplit_once('.')?;
    let new = match head {
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "attn.out_proj" => "self_attn.out_proj",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        _ => return None,
    };
    Some(format!("{new}.{tail}"))
}

/// Number of `transformer.resblocks.N` under `prefix`.
pub fn count_resblocks(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?.strip_prefix("transformer.resblocks.")?.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Number of `encoder.layers.N` in a transformers-layout CLIP under `prefix`.
pub fn count_layers(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?.strip_prefix("text_model.encoder.layers.")?.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}
