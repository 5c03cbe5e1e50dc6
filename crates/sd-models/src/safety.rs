//! diffusers' `StableDiffusionSafetyChecker` (pipelines/stable_diffusion/safety_checker.py): a CLIP vision tower
//! and `visual_projection` embed each image; its cosine similarity to 17 concept embeddings and 3 "special care"
//! embeddings, minus a stored threshold per embedding, gives the scores. A special-care hit raises every later
//! score by 0.01; an image is flagged when any concept score, rounded to 3 decimals, is above 0.
//!
//! Folder layout (a diffusers model root): `safety_checker/{config.json, model.safetensors}` with the transformers
//! `CLIPConfig`, and `feature_extractor/preprocessor_config.json` for the image preprocessing.

use crate::clip::config::{read_config, ClipConfig};
use crate::clip::image_processor::ClipImageProcessor;
use crate::clip::vision_model::ClipVisionModel;
use crate::nn::Linear;
use anyhow::{bail, Context, Result};
use sd_core::VarBuilder;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct SafetyChecker {
    vision_model: ClipVisionModel,
    visual_projection: Linear,
    concept_embeds: Tensor,
    special_care_embeds: Tensor,
    concept_thresholds: Vec<f32>,
    special_thresholds: Vec<f32>,
    processor: ClipImageProcessor,
}

/// The checker's judgement of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetyVerdict {
    /// Whether diffusers would replace the image with a black one.
    pub flagged: bool,
    /// cosine − threshold (+ 0.01 after a special-care hit) per concept, before diffusers' rounding.
    pub concept_scores: Vec<f32>,
    /// cosine − threshold per special-care concept (+ 0.01 for those after a hit), before rounding.
    pub special_scores: Vec<f32>,
}

/// diffusers raises later scores by this much once a special-care concept fires.
const SPECIAL_CARE_ADJUSTMENT: f32 = 0.01;

impl SafetyChecker {
    /// Load `model_root/safety_checker` + `model_root/feature_extractor`; `None` when the model ships no checker.
    pub fn load(model_root: &Path, kind: Kind, device: Device) -> Result<Option<Self>> {
        let dir = model_root.join("safety_checker");
        if !dir.is_dir() {
            return Ok(None);
        }
        let fe = model_root.join("feature_extractor").join("preprocessor_config.json");
        if !fe.is_file() {
            bail!(
                "{} has a safety_checker/ but no {} (the checker needs its image preprocessing)",
                model_root.display(),
                fe.display()
            );
        }
        let processor = ClipImageProcessor::from_file(&fe)?;
        let config_path = dir.join("config.json");
        let cfg: ClipConfig = read_config(&config_path)?;
        let weights = sd_core::model_dir::find_weights(&dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let checker = Self::from_varbuilder(&vb, &cfg, processor)
            .with_context(|| format!("invalid safety checker config {}", config_path.display()))?;
        vb.finish("safety checker", &[])?;
        Ok(Some(checker))
    }

    /// Build from any weight source (the caller calls `vb.finish`).
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &ClipConfig, processor: ClipImageProcessor) -> Result<Self> {
        let (crop_h, crop_w) = processor.crop;
        let s = cfg.vision_config.image_size;
        if processor.do_center_crop && (crop_h != s || crop_w != s) {
            bail!("the image processor crops to {crop_h}×{crop_w} but `vision_config.image_size` is {s}");
        }
        if cfg.projection_dim <= 0 {
            bail!("field `projection_dim` must be positive, found {}", cfg.projection_dim);
        }
        let p = cfg.projection_dim;
        let rows = |name: &str, default: i64| vb.shape_of(name).filter(|s| s.len() == 2).map_or(default, |s| s[0]);
        let (n_concepts, n_special) = (rows("concept_embeds", 17), rows("special_care_embeds", 3));
        let thresholds = |name: &str, n: i64| -> Result<Vec<f32>> {
            let t = vb.get(&[n], name)?.to_device(Device::Cpu).to_kind(Kind::Float);
            Ok(Vec::<f32>::try_from(&t)?)
        };
        Ok(Self {
            vision_model: ClipVisionModel::from_varbuilder(&(vb / "vision_model"), &cfg.vision_config)?,
            visual_projection: Linear::new(&(vb / "visual_projection"), cfg.vision_config.hidden_size, p, false)?,
            concept_embeds: vb.get(&[n_concepts, p], "concept_embeds")?.to_kind(Kind::Float),
            special_care_embeds: vb.get(&[n_special, p], "special_care_embeds")?.to_kind(Kind::Float),
            concept_thresholds: thresholds("concept_embeds_weights", n_concepts)?,
            special_thresholds: thresholds("special_care_embeds_weights", n_special)?,
            processor,
        })
    }

    /// Projected image embeddings (N × projection_dim, f32) of images in [0, 1].
    pub fn image_embeds(&self, images_unit_range: &Tensor) -> Result<Tensor> {
        let pixels = self.processor.preprocess(images_unit_range)?;
        let pooled = self.vision_model.forward(&pixels)?.pooled;
        Ok(self.visual_projection.forward(&pooled).to_kind(Kind::Float))
    }

    /// Judge N × 3 × H × W images in [0, 1] (quantised to 8 bits first, as the pipeline does).
    pub fn check(&self, images_unit_range: &Tensor) -> Result<Vec<SafetyVerdict>> {
        let embeds = tch::no_grad(|| self.image_embeds(images_unit_range))?;
        let cos = cosine_rows(&embeds, &self.concept_embeds)?;
        let special = cosine_rows(&embeds, &self.special_care_embeds)?;
        Ok(cos.iter().zip(&special).map(|(c, s)| self.verdict(c, s)).collect())
    }

    /// diffusers' per-image loop, in the same f32 arithmetic.
    fn verdict(&self, cos: &[f32], special_cos: &[f32]) -> SafetyVerdict {
        let mut adjustment = 0f32;
        let mut special_scores = Vec::with_capacity(special_cos.len());
        for (c, t) in special_cos.iter().zip(&self.special_thresholds) {
            let score = c - t + adjustment;
            special_scores.push(score);
            if round3(score) > 0.0 {
                adjustment = SPECIAL_CARE_ADJUSTMENT;
            }
        }
        let concept_scores: Vec<f32> =
            cos.iter().zip(&self.concept_thresholds).map(|(c, t)| c - t + adjustment).collect();
        let flagged = concept_scores.iter().any(|&s| round3(s) > 0.0);
        SafetyVerdict { flagged, concept_scores, special_scores }
    }
}

/// Replace flagged images by black ones, as the pipeline does.
pub fn black_out(images: &Tensor, verdicts: &[SafetyVerdict]) -> Result<Tensor> {
    let n = images.size().first().copied().unwrap_or(0);
    if n != verdicts.len() as i64 {
        bail!("{} verdicts for a batch of {n} images", verdicts.len());
    }
    let flags: Vec<bool> = verdicts.iter().map(|v| v.flagged).collect();
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, images.dim().saturating_sub(1)));
    let mask = Tensor::from_slice(&flags).view(shape.as_slice()).to_device(images.device());
    Ok(images.masked_fill(&mask, 0.0))
}

/// numpy's `round(x, 3)` on a float32: multiply, round half to even, divide, all in f32.
fn round3(x: f32) -> f32 {
    (x * 1000.0).round_ties_even() / 1000.0
}

/// Cosine similarity of every row of `a` with every row of `b`, as rows of f32.
fn cosine_rows(a: &Tensor, b: &Tensor) -> Result<Vec<Vec<f32>>> {
    let unit = |t: &Tensor| {
        let t = t.to_kind(Kind::Float);
        let norm = t.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
        t / norm
    };
    let m = unit(a).matmul(&unit(&b.to_device(a.device())).tr()).to_device(Device::Cpu).contiguous();
    let (rows, cols) = (m.size()[0], m.size()[1]);
    let flat = Vec::<f32>::try_from(&m.view([-1]))?;
    Ok((0..rows as usize).map(|r| flat[r * cols as usize..(r + 1) * cols as usize].to_vec()).collect())
}
