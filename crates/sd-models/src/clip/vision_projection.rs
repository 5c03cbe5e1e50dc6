//! transformers' `CLIPVisionModelWithProjection`: the vision tower plus `visual_projection` (bias-free) on its
//! pooled output. It is the image encoder IP-Adapter ships (`image_encoder/` beside the adapter files): base
//! adapters read the projected `image_embeds`, the "plus" and "full" ones the penultimate hidden state.
//!
//! The folder's `config.json` is a `CLIPVisionConfig` at top level (`projection_dim` included); a whole
//! `CLIPConfig` (a `vision_config` inside) is read too, as transformers does for this class.

use super::config::{read_config, ClipVisionConfig};
use super::vision_model::ClipVisionModel;
use crate::nn::Linear;
use anyhow::{bail, Context, Result};
use sd_core::VarBuilder;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct ClipVisionModelWithProjection {
    pub vision_model: ClipVisionModel,
    visual_projection: Linear,
}

/// What one forward pass gives: transformers' `image_embeds` and `hidden_states`.
pub struct ClipVisionProjectionOutput {
    /// `visual_projection(pooled)`: batch × projection_dim.
    pub image_embeds: Tensor,
    /// The embeddings and every layer's output, each batch × (1 + patches) × hidden.
    pub hidden_states: Vec<Tensor>,
}

impl ClipVisionProjectionOutput {
    /// `hidden_states[-2]`, the layer IP-Adapter "plus" reads.
    pub fn penultimate(&self) -> Result<&Tensor> {
        let n = self.hidden_states.len();
        n.checked_sub(2)
            .and_then(|i| self.hidden_states.get(i))
            .context("the image encoder has no penultimate hidden state (it needs at least one layer)")
    }
}

/// Read an image encoder folder's `config.json` (see the module notes for the two layouts).
pub fn read_vision_config(path: &Path) -> Result<ClipVisionConfig> {
    let v: serde_json::Value = read_config(path)?;
    let mut cfg: ClipVisionConfig = match v.get("vision_config") {
        Some(inner) => serde_json::from_value(inner.clone())
            .with_context(|| format!("{}: field `vision_config` is not a CLIP vision config", path.display()))?,
        None => read_config(path)?,
    };
    if let Some(p) = v.get("vision_config").and(v.get("projection_dim")).and_then(|p| p.as_i64()) {
        cfg.projection_dim = p;
    }
    Ok(cfg)
}

impl ClipVisionModelWithProjection {
    /// Load `dir/config.json` and `dir/model.safetensors` (or the folder's one weights file).
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!(
                "{} is not an image encoder folder: config.json is missing (expected a transformers \
                 CLIPVisionModelWithProjection folder, like IP-Adapter's image_encoder/)",
                dir.display()
            );
        }
        let cfg = read_vision_config(&config_path)?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let model = Self::from_varbuilder(&vb, &cfg)
            .with_context(|| format!("invalid image encoder config {}", config_path.display()))?;
        vb.finish("image encoder", &[])?;
        Ok(model)
    }

    /// Build from any weight source (the caller calls `vb.finish`).
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        if cfg.projection_dim <= 0 {
            bail!("field `projection_dim` must be positive, found {}", cfg.projection_dim);
        }
        Ok(Self {
            vision_model: ClipVisionModel::from_varbuilder(vb, cfg)?,
            visual_projection: Linear::new(&(vb / "visual_projection"), cfg.hidden_size, cfg.projection_dim, false)?,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        self.vision_model.config()
    }

    /// `pixels`: batch × channels × image_size × image_size, already normalised by the image processor.
    pub fn forward(&self, pixels: &Tensor) -> Result<ClipVisionProjectionOutput> {
        let (hidden_states, pooled) = self.vision_model.forward_hidden_states(pixels)?;
        Ok(ClipVisionProjectionOutput { image_embeds: self.visual_projection.forward(&pooled), hidden_states })
    }
}
