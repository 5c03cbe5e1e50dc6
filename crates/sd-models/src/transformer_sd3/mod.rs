//! `SD3Transformer2DModel`, the MMDiT denoiser of Stable Diffusion 3 / 3.5 (arXiv 2403.03206), built from its
//! diffusers `config.json` and loaded from its state dict without renaming.
//!
//! | file | diffusers |
//! |---|---|
//! | `config` | the config fields, checked against named limits |
//! | `norms` | `AdaLayerNormZero`, `SD35AdaLayerNormZeroX`, `AdaLayerNormContinuous`, `RMSNorm` |
//! | `attention` | `Attention` + `JointAttnProcessor2_0` (joint image/text attention, optional qk RMS norm) |
//! | `block` | `JointTransformerBlock`, `FeedForward` (tanh GELU) |
//! | here | `PatchEmbed` (cropped positional embedding), `CombinedTimestepTextProjEmbeddings`, the model |

pub mod attention;
pub mod block;
pub mod config;
pub mod norms;

pub use config::SD3TransformerConfig;

use crate::attention::AttentionMode;
use crate::nn::{Activation, Conv2d, Linear};
use crate::unet::embeddings::{timestep_embedding, TimestepEmbedding};
use anyhow::{ensure, Context, Result};
use block::JointTransformerBlock;
use norms::AdaLayerNormContinuous;
use sd_core::weights::VarBuilder;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `PatchEmbed` with SD3's `pos_embed_max_size`: a p×p-stride convolution into tokens, plus the centre crop of the
/// stored max-size sin-cos grid (`pos_embed.pos_embed`, a persistent buffer) that matches the latent's size.
#[derive(Debug)]
struct PatchEmbed {
    proj: Conv2d,
    pos_embed: Tensor,
    patch: i64,
    max: i64,
}

impl PatchEmbed {
    fn new(vb: &VarBuilder, cfg: &SD3TransformerConfig, max: i64) -> Result<Self> {
        let dim = cfg.inner_dim();
        let p = cfg.patch_size;
        Ok(Self {
            proj: Conv2d::new(&(vb / "proj"), cfg.in_channels, dim, p, p, 0, true)?,
            pos_embed: vb.get(&[1, max * max, dim], "pos_embed")?,
            patch: p,
            max,
        })
    }

    fn forward(&self, latent: &Tensor) -> Result<Tensor> {
        let s = latent.size();
        let (h, w) = (s[2] / self.patch, s[3] / self.patch);
        ensure!(
            h <= self.max && w <= self.max,
            "latent {}×{} is {h}×{w} patches, more than the model's positional grid of {m}×{m} (pos_embed_max_size); \
             generate at most {} px per side",
            s[2],
            s[3],
            self.max * self.patch * 8,
            m = self.max
        );
        let tokens = self.proj.forward(latent).f_flatten(2, -1)?.f_transpose(1, 2)?;
        let (top, left) = ((self.max - h) / 2, (self.max - w) / 2);
        let grid = self.pos_embed.f_reshape([1, self.max, self.max, -1])?;
        let pos = grid.f_narrow(1, top, h)?.f_narrow(2, left, w)?.f_reshape([1, h * w, -1])?;
        Ok(tokens.f_add(&pos)?.f_to_kind(tokens.kind())?)
    }
}

/// `CombinedTimestepTextProjEmbeddings`: the timestep's 256-channel sinusoid through an MLP, plus the pooled text
/// embedding through another (`PixArtAlphaTextProjection` with SiLU).
#[derive(Debug)]
struct TimeTextEmbed {
    timestep_embedder: TimestepEmbedding,
    text_1: Linear,
    text_2: Linear,
}

impl TimeTextEmbed {
    fn new(vb: &VarBuilder, dim: i64, pooled_dim: i64) -> Result<Self> {
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(
                &(vb / "timestep_embedder"),
                256,
                dim,
                Activation::Silu,
                None,
                None,
            )?,
            text_1: Linear::new(&(vb / "text_embedder" / "linear_1"), pooled_dim, dim, true)?,
            text_2: Linear::new(&(vb / "text_embedder" / "linear_2"), dim, dim, true)?,
        })
    }

    fn forward(&self, timestep: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        let proj = timestep_embedding(timestep, 256, true, 0.0)?.f_to_kind(pooled.kind())?;
        let t = self.timestep_embedder.forward(&proj, None)?;
        let p = self.text_2.forward(&self.text_1.forward(pooled).silu());
        Ok(t + p)
    }
}

#[derive(Debug)]
pub struct SD3Transformer2DModel {
    pub config: SD3TransformerConfig,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    transformer_blocks: Vec<JointTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
}

impl SD3Transformer2DModel {
    /// From a diffusers `transformer/` folder (config.json + safetensors, sharded or not).
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg = SD3TransformerConfig::from_file(&dir.join("config.json"))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let model = Self::from_varbuilder(&vb, &cfg)?;
        vb.finish("SD3Transformer2DModel", &[])?;
        Ok(model)
    }

    /// Build from any weight source; the caller runs `vb.finish`.
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &SD3TransformerConfig) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        let max = cfg.pos_embed_max_size.context("pos_embed_max_size")?;
        let rms = cfg.qk_norm.as_deref() == Some("rms_norm");
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let pre_only = i == cfg.num_layers - 1;
            let dual = cfg.dual_attention_layers.contains(&i);
            let b = JointTransformerBlock::new(
                &(vb / "transformer_blocks" / i),
                dim,
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                pre_only,
                rms,
                dual,
            )?;
            blocks.push(b);
        }
        let p = cfg.patch_size;
        Ok(Self {
            config: cfg.clone(),
            pos_embed: PatchEmbed::new(&(vb / "pos_embed"), cfg, max)?,
            time_text_embed: TimeTextEmbed::new(&(vb / "time_text_embed"), dim, cfg.pooled_projection_dim)?,
            context_embedder: Linear::new(
                &(vb / "context_embedder"),
                cfg.joint_attention_dim,
                cfg.caption_projection_dim,
                true,
            )?,
            transformer_blocks: blocks,
            norm_out: AdaLayerNormContinuous::new(&(vb / "norm_out"), dim, dim)?,
            proj_out: Linear::new(&(vb / "proj_out"), dim, p * p * cfg.out_channels(), true)?,
        })
    }

    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        for b in &mut self.transformer_blocks {
            b.set_attention_mode(mode);
        }
    }

    /// The velocity for latents `sample` `[B, C, H, W]` at `timestep` `[B]` (σ·1000), text states
    /// `encoder_hidden_states` `[B, S, joint_attention_dim]` and pooled text `pooled_projections`
    /// `[B, pooled_projection_dim]`. `skip_layers`: blocks left out (skip-layer guidance).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        pooled_projections: &Tensor,
        skip_layers: &[usize],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let s = sample.size();
        ensure!(
            s.len() == 4 && s[1] == cfg.in_channels,
            "the SD3 transformer expects latents [batch, {}, height, width], got {s:?}",
            cfg.in_channels
        );
        let p = cfg.patch_size;
        ensure!(
            s[2] % p == 0 && s[3] % p == 0,
            "latent size {}×{} is not a multiple of the patch size {p}",
            s[2],
            s[3]
        );
        let e = encoder_hidden_states.size();
        ensure!(
            e.len() == 3 && e[0] == s[0] && e[2] == cfg.joint_attention_dim,
            "text states must be [{}, tokens, {}], got {e:?}",
            s[0],
            cfg.joint_attention_dim
        );
        ensure!(
            pooled_projections.size() == [s[0], cfg.pooled_projection_dim],
            "pooled text must be [{}, {}], got {:?}",
            s[0],
            cfg.pooled_projection_dim,
            pooled_projections.size()
        );
        ensure!(
            timestep.dim() == 1 && timestep.size()[0] == s[0],
            "timestep must be [{}] (one per latent), got {:?}",
            s[0],
            timestep.size()
        );
        let (h, w) = (s[2] / p, s[3] / p);
        let mut x = self.pos_embed.forward(sample)?;
        let temb = self.time_text_embed.forward(timestep, pooled_projections)?;
        let mut c = self.context_embedder.forward(encoder_hidden_states);
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            if skip_layers.contains(&i) {
                continue;
            }
            let (nx, nc) = block.forward(&x, &c, &temb)?;
            x = nx;
            if let Some(nc) = nc {
                c = nc;
            }
        }
        let x = self.proj_out.forward(&self.norm_out.forward(&x, &temb)?);
        let oc = cfg.out_channels();
        // tokens → patches → image: (n, h, w, p, q, c) → (n, c, h, p, w, q)
        Ok(x.f_reshape([s[0], h, w, p, p, oc])?.f_permute([0, 5, 1, 3, 2, 4])?.f_reshape([s[0], oc, h * p, w * p])?)
    }
}
