//! Which Stable Diffusion family a model folder holds, decided from its configs (never from its name alone),
//! and the defaults that follow from it (resolution, text-encoder layout, watermark payload).

use anyhow::{bail, Result};
use sd_core::model_dir::ModelDir;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: one CLIP-L encoder, 768-wide context.
    Sd1,
    /// SD 2.x: one OpenCLIP-H encoder, 1024-wide context, often v-prediction (768-v).
    Sd2,
    /// SDXL base: two encoders, pooled embeddings and size conditioning.
    Sdxl,
}

impl FromStr for Family {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "sd1" | "sd15" | "sd1.5" | "sd1.x" => Self::Sd1,
            "sd2" | "sd21" | "sd2.1" | "sd2.x" => Self::Sd2,
            "sdxl" | "xl" => Self::Sdxl,
            other => bail!("unknown family `{other}`: expected sd1, sd2 or sdxl (or auto)"),
        })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sd1 => "sd1",
            Self::Sd2 => "sd2",
            Self::Sdxl => "sdxl",
        })
    }
}

/// What the loader learned about a model folder.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub family: Family,
    /// The UNet takes 9 channels (latents + mask + masked-image latents).
    pub inpainting: bool,
    /// `epsilon`, `v_prediction` or `sample`, from the scheduler config (overridable).
    pub prediction_type: String,
    /// Distilled few-step model (SD-Turbo / SDXL-Turbo): 1–4 steps, no CFG.
    pub turbo: bool,
    /// Native resolution (UNet sample_size × VAE scale factor).
    pub default_size: i64,
    /// An SDXL refiner (diffusers' `requires_aesthetics_score`): one text encoder (`text_encoder_2`, OpenCLIP G)
    /// and an aesthetic score in place of the target size among its time ids. Its family is [`Family::Sdxl`].
    pub refiner: bool,
}

impl ModelInfo {
    /// Detect from the folder's configs.
    pub fn detect(dir: &ModelDir) -> Result<Self> {
        let unet = dir.component_config("unet")?;
        let pipeline = dir.pipeline_class().unwrap_or_default();
        let components = dir.components();
        let has_te2 = components.iter().any(|c| c == "text_encoder_2");
        let refiner = dir.index.get("requires_aesthetics_score").and_then(|v| v.as_bool()) == Some(true)
            || (has_te2 && !components.iter().any(|c| c == "text_encoder"));
        let family = if refiner
            || pipeline.contains("XL")
            || has_te2
            || unet.get("addition_embed_type").and_then(|v| v.as_str()) == Some("text_time")
        {
            Family::Sdxl
        } else {
            let te = dir.component_config("text_encoder").ok();
            let act = te.as_ref().and_then(|c| c.get("hidden_act")).and_then(|v| v.as_str()).unwrap_or("quick_gelu");
            let cross = unet.get("cross_attention_dim").and_then(|v| v.as_i64()).unwrap_or(768);
            if act == "gelu" || cross == 1024 {
                Family::Sd2
            } else {
                Family::Sd1
            }
        };
        let inpainting = unet.get("in_channels").and_then(|v| v.as_i64()) == Some(9);
        let sched = dir.component_config("scheduler").ok();
        let prediction_type = sched
            .as_ref()
            .and_then(|c| c.get("prediction_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("epsilon")
            .to_string();
        let root = dir.root.to_string_lossy().to_ascii_lowercase();
        let turbo = root.contains("turbo");
        let sample = unet.get("sample_size").and_then(|v| v.as_i64()).unwrap_or(64);
        let vae_blocks = dir
            .component_config("vae")
            .ok()
            .and_then(|c| c.get("block_out_channels").and_then(|b| b.as_array()).map(|a| a.len()))
            .unwrap_or(4);
        let default_size = sample * (1i64 << (vae_blocks.saturating_sub(1)));
        Ok(Self { family, inpainting, prediction_type, turbo, default_size, refiner })
    }
}
