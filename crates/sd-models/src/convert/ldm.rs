//! LDM (CompVis / Stability `sgm`) UNet and VAE names → diffusers names.
//! Same mapping as diffusers `loaders/single_file_utils.py` (`convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`), written as a parser of each key rather than as string replacement passes, so a
//! key that fits no rule is reported instead of being carried over under a wrong name.

use super::plan::{Component, Item, Op};
use super::source::TensorSource;
use anyhow::{anyhow, Result};
use std::collections::BTreeSet;

/// Renames inside a UNet ResBlock (`in_layers.0` → `norm1`, ...).
fn unet_resnet(rest: &str) -> Option<String> {
    if let Some(t) = rest.strip_prefix("skip_connection.") {
        return Some(format!("conv_shortcut.{t}"));
    }
    let (head, tail) = split2(rest)?;
    let new = match head.as_str() {
        "in_layers.0" => "norm1",
        "in_layers.2" => "conv1",
        "out_layers.0" => "norm2",
        "out_layers.3" => "conv2",
        "emb_layers.1" => "time_emb_proj",
        _ => return None,
    };
    Some(format!("{new}.{tail}"))
}

/// `a.b.rest` → (`a.b`, `rest`).
fn split2(s: &str) -> Option<(String, String)> {
    let mut it = s.splitn(3, '.');
    let (a, b, c) = (it.next()?, it.next()?, it.next()?);
    Some((format!("{a}.{b}"), c.to_string()))
}

/// `N.rest` → (N, rest).
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The diffusers name of one UNet key (without the `model.diffusion_model.` prefix).
/// `label_emb` becomes `add_embedding` (SDXL text_time) or `class_embedding` depending on `text_time`.
pub fn unet_name(key: &str, layers_per_block: usize, text_time: bool) -> Option<String> {
    let per = layers_per_block + 1;
    let fixed = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (old, new) in fixed {
        if let Some(t) = key.strip_prefix(old) {
            return Some(format!("{new}{t}"));
        }
    }
    if let Some(t) = key.strip_prefix("label_emb.0.") {
        let emb = if text_time { "add_embedding" } else { "class_embedding" };
        let (n, rest) = index(t)?;
        let lin = match n {
            0 => "linear_1",
            2 => "linear_2",
            _ => return None,
        };
        return Some(format!("{emb}.{lin}.{rest}"));
    }
    if let Some(t) = key.strip_prefix("input_blocks.") {
        let (i, rest) = index(t)?;
        if i == 0 {
            return None;
        }
        let (block, layer) = ((i - 1) / per, (i - 1) % per);
        let (sub, rest) = index(rest)?;
        return match sub {
            0 => match rest.strip_prefix("op.") {
                Some(p) => Some(format!("down_blocks.{block}.downsamplers.0.conv.{p}")),
                None => Some(format!("down_blocks.{block}.resnets.{layer}.{}", unet_resnet(rest)?)),
            },
            1 => Some(format!("down_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    if let Some(t) = key.strip_prefix("middle_block.") {
        let (i, rest) = index(t)?;
        return match i {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", i / 2, unet_resnet(rest)?)),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    if let Some(t) = key.strip_prefix("output_blocks.") {
        let (i, rest) = index(t)?;
        let (block, layer) = (i / per, i % per);
        let (sub, rest) = index(rest)?;
        if let Some(p) = rest.strip_prefix("conv.").filter(|_| sub == 1 || sub == 2) {
            return Some(format!("up_blocks.{block}.upsamplers.0.conv.{p}"));
        }
        return match sub {
            0 => Some(format!("up_blocks.{block}.resnets.{layer}.{}", unet_resnet(rest)?)),
            1 => Some(format!("up_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    None
}

/// Where the UNet lives in a checkpoint: `model.diffusion_model.` in full checkpoints, nothing in UNet-only files.
pub fn unet_prefix(names: &[String]) -> Option<&'static str> {
    if names.iter().any(|n| n.starts_with("model.diffusion_model.")) {
        Some("model.diffusion_model.")
    } else if names.iter().any(|n| n == "input_blocks.0.0.weight") {
        Some("")
    } else {
        None
    }
}

/// LDM keeps EMA weights as `model_ema.<path without dots>` (e.g. `model_ema.diffusion_modelinput_blocks00weight`).
pub fn ema_name(full_key: &str) -> String {
    let rest = full_key.strip_prefix("model.").unwrap_or(full_key);
    format!("model_ema.{}", rest.replace('.', ""))
}

/// Plan the UNet; returns items and the source keys they (or the EMA they were replaced by) account for.
#[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
pub fn plan_unet(
    src: &dyn TensorSource,
    names: &[String],
    prefix: &str,
    layers_per_block: usize,
    text_time: bool,
    ema: bool,
    used: &mut BTreeSet<String>,
    unknown: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for key in names {
        let Some(local) = key.strip_prefix(prefix) else { continue };
        if prefix.is_empty() && !is_unet_local(local) {
            continue;
        }
        let Some(name) = unet_name(local, layers_per_block, text_time) else {
            unknown.push(key.clone());
            continue;
        };
        let source = if ema { ema_name(key) } else { key.clone() };
        let shape = src
            .shape(&source)
            .ok_or_else(|| anyhow!("--ema: `{key}` has no EMA copy `{source}` in {}", src.describe()))?;
        // With --ema the training weight stays unused, so the ignore report says it was replaced.
        used.insert(source.clone());
        items.push(Item::new(Component::Unet, name, 0, &source, Op::Copy, &shape)?);
    }
    Ok(items)
}

fn is_unet_local(k: &str) -> bool {
    ["time_embed.", "label_emb.", "input_blocks.", "middle_block.", "output_blocks.", "out."]
        .iter()
        .any(|p| k.starts_with(p))
}

/// The VAE prefix: `first_stage_model.` (SD checkpoints), `vae.`, or nothing (VAE-only files).
pub fn vae_prefix(names: &[String]) -> Option<&'static str> {
    for p in ["first_stage_model.", "vae."] {
        if names.iter().any(|n| n.starts_with(p)) {
            return Some(p);
        }
    }
    names.iter().any(|n| n == "encoder.conv_in.weight").then_some("")
}

fn vae_resnet(rest: &str) -> String {
    rest.replace("nin_shortcut", "conv_shortcut")
}

/// Attention in the VAE mid block: LDM uses 1×1 convs named q/k/v/proj_out and `norm`.
fn vae_attention(rest: &str) -> Option<(String, bool)> {
    let (head, tail) = rest.split_once('.')?;
    let new = match head {
        "norm" => return Some((format!("group_norm.{tail}"), false)),
        "q" => "to_q",
        "k" => "to_k",
        "v" => "to_v",
        "proj_out" => "to_out.0",
        _ => return None,
    };
    Some((format!("{new}.{tail}"), tail == "weight"))
}

/// The diffusers name of one VAE key (prefix removed); `num_up` = number of decoder up blocks.
/// Second value: whether the tensor is a 1×1 conv weight that diffusers stores as a linear weight.
pub fn vae_name(key: &str, num_up: usize) -> Option<(String, bool)> {
    for side in ["encoder", "decoder"] {
        let Some(t) = key.strip_prefix(side).and_then(|t| t.strip_prefix('.')) else { continue };
        for (old, new) in [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out.")] {
            if let Some(p) = t.strip_prefix(old) {
                return Some((format!("{side}.{new}{p}"), false));
            }
        }
        if let Some(m) = t.strip_prefix("mid.") {
            let (head, rest) = m.split_once('.')?;
            return match head {
                "block_1" => Some((format!("{side}.mid_block.resnets.0.{}", vae_resnet(rest)), false)),
                "block_2" => Some((format!("{side}.mid_block.resnets.1.{}", vae_resnet(rest)), false)),
                "attn_1" => vae_attention(rest).map(|(n, lin)| (format!("{side}.mid_block.attentions.0.{n}"), lin)),
                _ => None,
            };
        }
        let (kind, t) = t.split_once('.')?;
        let (i, rest) = index(t)?;
        return match (side, kind) {
            ("encoder", "down") => {
                if let Some(p) = rest.strip_prefix("downsample.conv.") {
                    Some((format!("encoder.down_blocks.{i}.downsamplers.0.conv.{p}"), false))
                } else {
                    let (j, r) = index(rest.strip_prefix("block.")?)?;
                    Some((format!("encoder.down_blocks.{i}.resnets.{j}.{}", vae_resnet(r)), false))
                }
            }
            ("decoder", "up") => {
                // LDM numbers decoder blocks from the lowest resolution up; diffusers from the first applied.
                let b = num_up.checked_sub(1 + i)?;
                if let Some(p) = rest.strip_prefix("upsample.conv.") {
                    Some((format!("decoder.up_blocks.{b}.upsamplers.0.conv.{p}"), false))
                } else {
                    let (j, r) = index(rest.strip_prefix("block.")?)?;
                    Some((format!("decoder.up_blocks.{b}.resnets.{j}.{}", vae_resnet(r)), false))
                }
            }
            _ => None,
        };
    }
    for q in ["quant_conv.", "post_quant_conv."] {
        if key.starts_with(q) {
            return Some((key.to_string(), false));
        }
    }
    None
}

/// Keys of a VAE-only file that belong to the training loss (discriminator, LPIPS), never to the model.
pub fn is_vae_loss(local: &str) -> bool {
    local.starts_with("loss.")
}

/// Plan the VAE found under `prefix` in source `file`.
pub fn plan_vae(
    src: &dyn TensorSource,
    names: &[String],
    prefix: &str,
    file: usize,
    used: &mut BTreeSet<String>,
    unknown: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let num_up = names
        .iter()
        .filter_map(|n| n.strip_prefix(prefix)?.strip_prefix("decoder.up.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let mut items = Vec::new();
    for key in names {
        let Some(local) = key.strip_prefix(prefix) else { continue };
        let is_vae = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."].iter().any(|p| local.starts_with(p));
        if !is_vae {
            continue;
        }
        let Some((name, linear)) = vae_name(local, num_up) else {
            unknown.push(key.clone());
            continue;
        };
        let shape = src.shape(key).ok_or_else(|| anyhow!("internal: no shape for {key}"))?;
        let op = if linear && shape.len() > 2 { Op::ConvToLinear } else { Op::Copy };
        used.insert(key.clone());
        items.push(Item::new(Component::Vae, name, file, key, op, &shape)?);
    }
    Ok(items)
}
