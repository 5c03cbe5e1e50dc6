//! Which model a checkpoint holds, which keys are left out on purpose, and which text encoders it carries.

use super::clip;
pub use super::configs::Configs;
use super::plan::{Component, Item};
use super::source::TensorSource;
use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sd1,
    /// SD 2.x (512 epsilon base and 768 v-prediction)
    Sd2,
    Sdxl,
    SdxlRefiner,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::SdxlRefiner => "sdxl-refiner",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sd1" | "sd15" | "v1" => Family::Sd1,
            "sd2" | "v2" => Family::Sd2,
            "sdxl" | "xl" => Family::Sdxl,
            "sdxl-refiner" | "refiner" => Family::SdxlRefiner,
            _ => return None,
        })
    }
}

/// Keys that are known and carry nothing a diffusers pipeline uses (DDPM schedule buffers are recomputed from the
/// scheduler config). Patterns: exact, `prefix*`, `*suffix`.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    ("model_ema.decay", "EMA bookkeeping"),
    ("model_ema.num_updates", "EMA bookkeeping"),
    ("*embeddings.position_ids", "CLIP position-id buffer (0..76), rebuilt by transformers"),
    ("betas", "DDPM schedule buffer"),
    ("alphas_cumprod", "DDPM schedule buffer"),
    ("alphas_cumprod_prev", "DDPM schedule buffer"),
    ("sqrt_alphas_cumprod", "DDPM schedule buffer"),
    ("sqrt_one_minus_alphas_cumprod", "DDPM schedule buffer"),
    ("log_one_minus_alphas_cumprod", "DDPM schedule buffer"),
    ("sqrt_recip_alphas_cumprod", "DDPM schedule buffer"),
    ("sqrt_recipm1_alphas_cumprod", "DDPM schedule buffer"),
    ("posterior_variance", "DDPM schedule buffer"),
    ("posterior_log_variance_clipped", "DDPM schedule buffer"),
    ("posterior_mean_coef1", "DDPM schedule buffer"),
    ("posterior_mean_coef2", "DDPM schedule buffer"),
    ("logvar", "LDM learned-variance buffer, unused at inference"),
    ("*model.logit_scale", "OpenCLIP contrastive temperature, unused by the text encoder"),
    ("*model.attn_mask", "OpenCLIP causal-mask buffer"),
    ("first_stage_model.loss.*", "VAE training loss (discriminator/LPIPS)"),
    ("loss.*", "VAE training loss (discriminator/LPIPS)"),
];

fn matches(pattern: &str, name: &str) -> bool {
    if let Some(s) = pattern.strip_prefix('*') {
        name.ends_with(s)
    } else if let Some(p) = pattern.strip_suffix('*') {
        name.starts_with(p)
    } else {
        name == pattern
    }
}

pub fn ignored_reason(name: &str) -> Option<&'static str> {
    IGNORED_KEYS.iter().find(|(p, _)| matches(p, name)).map(|(_, r)| *r)
}

/// Keys left out because of the family or the options (not in the static table).
pub fn family_ignored(name: &str, family: Family, ema: bool, vae_override: bool) -> Option<&'static str> {
    if name.starts_with("model_ema.") && !ema {
        return Some("EMA copy of the UNet (pass --ema to use it instead of the training weights)");
    }
    if ema && name.starts_with("model.diffusion_model.") {
        return Some("replaced by its EMA copy (--ema)");
    }
    if vae_override && (name.starts_with("first_stage_model.") || name.starts_with("vae.")) {
        return Some("replaced by the --vae file");
    }
    let open_clip = match family {
        Family::Sd2 => "cond_stage_model.model.",
        Family::Sdxl => "conditioner.embedders.1.model.",
        Family::SdxlRefiner => "conditioner.embedders.0.model.",
        Family::Sd1 => return None,
    };
    let rest = name.strip_prefix(open_clip)?;
    if rest == "text_projection" {
        return Some("OpenCLIP projection; SD2's text encoder is a CLIPTextModel without one");
    }
    rest.starts_with("transformer.resblocks.")
        .then_some("OpenCLIP layer past the config's num_hidden_layers (SD2 conditions on the penultimate layer)")
}

/// Detect the family from marker keys (text encoder layout first, then the UNet's cross-attention width).
pub fn detect(src: &dyn TensorSource, names: &[String]) -> Family {
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    if has("conditioner.embedders.1.model.") {
        return Family::Sdxl;
    }
    if has("conditioner.embedders.0.model.") {
        return Family::SdxlRefiner;
    }
    if has("cond_stage_model.model.") {
        return Family::Sd2;
    }
    if has("cond_stage_model.transformer.") || has("conditioner.embedders.0.transformer.") {
        return if has("conditioner.") { Family::Sdxl } else { Family::Sd1 };
    }
    let ctx = names
        .iter()
        .find(|n| n.ends_with("attn2.to_k.weight"))
        .and_then(|n| src.shape(n))
        .and_then(|s| s.get(1).copied());
    match ctx {
        Some(1024) => Family::Sd2,
        Some(2048) => Family::Sdxl,
        Some(1280) => Family::SdxlRefiner,
        _ if names.iter().any(|n| n.contains("label_emb.0.0.weight")) => Family::Sdxl,
        _ => Family::Sd1,
    }
}

/// Plan the text encoder(s) of `family`.
pub fn plan_text_encoders(
    src: &dyn TensorSource,
    names: &[String],
    family: Family,
    configs: &Configs,
    used: &mut BTreeSet<String>,
    unknown: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let layers = |cfg: &Value| cfg["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    let mut items = Vec::new();
    match family {
        Family::Sd1 => {
            if has("cond_stage_model.transformer.") {
                items.extend(clip::plan_clip_l(
                    src,
                    names,
                    "cond_stage_model.transformer.",
                    Component::TextEncoder,
                    used,
                )?);
            }
        }
        Family::Sd2 => {
            let p = "cond_stage_model.model.";
            if has(p) {
                let n = layers(&configs.text_encoder);
                items.extend(clip::plan_open_clip(src, names, p, Component::TextEncoder, n, false, used, unknown)?);
            }
        }
        Family::Sdxl => {
            let p0 = "conditioner.embedders.0.transformer.";
            if has(p0) {
                items.extend(clip::plan_clip_l(src, names, p0, Component::TextEncoder, used)?);
            }
            let p1 = "conditioner.embedders.1.model.";
            if has(p1) {
                let n = layers(&configs.text_encoder_2);
                items.extend(clip::plan_open_clip(src, names, p1, Component::TextEncoder2, n, true, used, unknown)?);
            }
        }
        Family::SdxlRefiner => {
            let p = "conditioner.embedders.0.model.";
            if has(p) {
                let n = layers(&configs.text_encoder_2);
                items.extend(clip::plan_open_clip(src, names, p, Component::TextEncoder2, n, true, used, unknown)?);
            }
        }
    }
    Ok(items)
}
