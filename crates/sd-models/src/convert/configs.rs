//! The diffusers `config.json` of each component: taken from `--config-dir` when given, otherwise the canonical
//! SD1.5 / SD2.1 / SDXL configs committed under `configs/` (facts about the released models), patched with what
//! the weights themselves say (input/output channels, cross-attention width, text-encoder widths and depth).
//! SD2's prediction type and resolution follow diffusers' `global_step` heuristic (875000 = SD2-base, epsilon, 512).

use super::clip;
use super::family::Family;
use super::plan::Component;
use super::source::TensorSource;
use super::{ConvertOptions, Prediction};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub(super) fn canonical(text: &str) -> Value {
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
            // Checkpoint plans never hold ControlNet tensors; its config comes from `convert::controlnet`.
            Component::ControlNet | Component::Transformer | Component::TextEncoder3 => &Value::Null,
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
        if let Some(s) =
            names.iter().find(|n| n.starts_with(p) && n.ends_with("attn2.to_k.weight")).and_then(|n| shape(n))
        {
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
pub(super) fn patch_text(
    mut cfg: Value,
    src: &dyn TensorSource,
    tok: &str,
    pos: &str,
    fc1: &str,
    layers: usize,
) -> Value {
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
        Family::SdxlRefiner => {
            (Value::Null, open("conditioner.embedders.0.model.", include_str!("configs/open_clip_bigg.json"), 0))
        }
    }
}
