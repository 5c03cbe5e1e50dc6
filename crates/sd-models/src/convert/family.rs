//! Which model a checkpoint holds, the diffusers configs that describe it, and which keys are left out on purpose.

use super::clip;
use super::plan::{Component, Item};
use super::source::TensorSource;
use super::{ConvertOptions, Prediction};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
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
    let ctx = names.iter().find(|n| n.ends_with("attn2.to_k.weight")).and_then(|n| src.shape(n)).and_then(|s| s.get(1).copied());
    match ctx {
        Some(1024) => Family::Sd2,
        Some(2048) => Family::Sdxl,
        Some(1280) => Family::SdxlRefiner,
        _ if names.iter().any(|n| n.contains("label_emb.0.0.weight")) => Family::Sdxl,
        _ => Family::Sd1,
    }
}

fn canonical(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The configs of every component plus the scheduler's.
pub struct Configs {
    pub unet: Value,
    pub vae: Value,
    pub text_encoder: Value,
    pub text_encoder_2: Value,
    pub scheduler: Value,
    pub prediction_type: String,
}

impl Configs {
    pub fn for_component(&self, c: Component) -> &Value {
        match c {
            Component::Unet => &self.unet,
            Component::Vae => &self.vae,
            Component::TextEncoder => &self.text_encoder,
            Component::TextEncoder2 => &self.text_encoder_2,
        }
    }

    pub fn load(family: Family, opts: &ConvertOptions, src: &dyn TensorSource, names: &[String]) -> Result<Self> {
        let step = src.global_step();
        let sd2_base = family == Family::Sd2 && step == Some(875_000);
        let prediction = match (opts.prediction, family) {
            (Prediction::Epsilon, _) => "epsilon",
            (Prediction::V, _) => "v_prediction",
            (Prediction::Auto, Family::Sd2) if !sd2_base => "v_prediction",
            (Prediction::Auto, _) => "epsilon",
        };
        if let Some(dir) = &opts.config_dir {
            let read = |rel: &str| -> Result<Value> {
                let p = dir.join(rel);
                if !p.exists() {
                    return Ok(Value::Null);
                }
                let t = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", p.display()))
            };
            let mut scheduler = read("scheduler/scheduler_config.json")?;
            let mut prediction_type = scheduler["prediction_type"].as_str().unwrap_or("epsilon").to_string();
            if opts.prediction != Prediction::Auto || scheduler.is_null() {
                prediction_type = prediction.to_string();
            }
            if scheduler.is_null() {
                scheduler = default_scheduler(family);
            }
            scheduler["prediction_type"] = json!(prediction_type);
            let unet = read("unet/config.json")?;
            if unet.is_null() && ldm_has_unet(names) {
                bail!("--config-dir {}: unet/config.json is missing", dir.display());
            }
            return Ok(Self {
                unet,
                vae: read("vae/config.json")?,
                text_encoder: read("text_encoder/config.json")?,
                text_encoder_2: read("text_encoder_2/config.json")?,
                scheduler,
                prediction_type,
            });
        }
        let shape = |k: &str| src.shape(k);
        let mut unet = canonical(match family {
            Family::Sd1 => include_str!("configs/unet_sd1.json"),
            Family::Sd2 => include_str!("configs/unet_sd2.json"),
            Family::Sdxl => include_str!("configs/unet_sdxl.json"),
            Family::SdxlRefiner => include_str!("configs/unet_sdxl_refiner.json"),
        });
        let p = super::ldm::unet_prefix(names).unwrap_or("model.diffusion_model.");
        if let Some(s) = shape(&format!("{p}input_blocks.0.0.weight")) {
            unet["in_channels"] = json!(s[1]);
        }
        if let Some(s) = shape(&format!("{p}out.2.weight")) {
            unet["out_channels"] = json!(s[0]);
        }
        if let Some(s) = shape(&format!("{p}label_emb.0.0.weight")) {
            unet["projection_class_embeddings_input_dim"] = json!(s[1]);
        }
        if let Some(s) = names.iter().find(|n| n.starts_with(p) && n.ends_with("attn2.to_k.weight")).and_then(|n| shape(n)) {
            unet["cross_attention_dim"] = json!(s[1]);
        }
        if family == Family::Sd2 {
            unet["sample_size"] = json!(if sd2_base { 64 } else { 96 });
            unet["upcast_attention"] = json!(!sd2_base);
        }
        let mut vae = canonical(include_str!("configs/vae.json"));
        let image = match family {
            Family::Sd1 => 512,
            Family::Sd2 if sd2_base => 512,
            Family::Sd2 => 768,
            _ => 1024,
        };
        vae["sample_size"] = json!(image);
        if matches!(family, Family::Sdxl | Family::SdxlRefiner) {
            vae["scaling_factor"] = json!(0.13025);
        }
        let (te1, te2) = text_configs(family, src, names);
        let mut scheduler = default_scheduler(family);
        scheduler["prediction_type"] = json!(prediction);
        Ok(Self { unet, vae, text_encoder: te1, text_encoder_2: te2, scheduler, prediction_type: prediction.into() })
    }
}

fn ldm_has_unet(names: &[String]) -> bool {
    super::ldm::unet_prefix(names).is_some()
}

fn default_scheduler(family: Family) -> Value {
    match family {
        Family::Sdxl | Family::SdxlRefiner => canonical(include_str!("configs/scheduler_sdxl.json")),
        _ => canonical(include_str!("configs/scheduler_sd.json")),
    }
}

/// Patch a canonical text-encoder config with what the weights say (widths, layer count, vocabulary).
fn patch_text(mut cfg: Value, src: &dyn TensorSource, tok: &str, pos: &str, fc1: &str, layers: usize) -> Value {
    if let Some(s) = src.shape(tok) {
        cfg["vocab_size"] = json!(s[0]);
        cfg["hidden_size"] = json!(s[1]);
    }
    if let Some(s) = src.shape(pos) {
        cfg["max_position_embeddings"] = json!(s[0]);
    }
    if let Some(s) = src.shape(fc1) {
        cfg["intermediate_size"] = json!(s[0]);
    }
    if layers > 0 {
        cfg["num_hidden_layers"] = json!(layers);
    }
    cfg
}

fn text_configs(family: Family, src: &dyn TensorSource, names: &[String]) -> (Value, Value) {
    let clip_l = |p: &str| {
        let cfg = canonical(include_str!("configs/clip_l.json"));
        let t = format!("{p}text_model.");
        patch_text(
            cfg,
            src,
            &format!("{t}embeddings.token_embedding.weight"),
            &format!("{t}embeddings.position_embedding.weight"),
            &format!("{t}encoder.layers.0.mlp.fc1.weight"),
            clip::count_layers(names, p),
        )
    };
    let open = |p: &str, text: &str, drop_last: usize| {
        let n = clip::count_resblocks(names, p).saturating_sub(drop_last);
        let mut cfg = patch_text(
            canonical(text),
            src,
            &format!("{p}token_embedding.weight"),
            &format!("{p}positional_embedding"),
            &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"),
            n,
        );
        if let Some(s) = src.shape(&format!("{p}text_projection")) {
            cfg["projection_dim"] = json!(s[1]);
        }
        cfg
    };
    match family {
        Family::Sd1 => (clip_l("cond_stage_model.transformer."), Value::Null),
        Family::Sd2 => (open("cond_stage_model.model.", include_str!("configs/open_clip_h.json"), 1), Value::Null),
        Family::Sdxl => (
            clip_l("conditioner.embedders.0.transformer."),
            open("conditioner.embedders.1.model.", include_str!("configs/open_clip_bigg.json"), 0),
        ),
        Family::SdxlRefiner => (Value::Null, open("conditioner.embedders.0.model.", include_str!("configs/open_clip_bigg.json"), 0)),
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
                items.extend(clip::plan_clip_l(src, names, "cond_stage_model.transformer.", Component::TextEncoder, used)?);
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
