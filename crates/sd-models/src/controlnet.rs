//! `ControlNetModel`: the UNet's contracting half (shared with [`crate::unet`]) fed with an extra picture — edges,
//! a pose, depth — through a small convolutional embedding, whose skips and mid output leave through zero-initialised
//! 1×1 convolutions as residuals for the UNet (`down_block_additional_residuals`,
//! `mid_block_additional_residual`). Built from diffusers' `config.json` and state-dict names.
//! Reference: diffusers 0.42.1 `models/controlnets/controlnet.py`.

use crate::convert::{
    self,
    controlnet::{ControlNetPlan, GivenConfig},
};
use crate::nn::{Activation, Conv2d};
use crate::unet::encoder::{activation, Encoded, UNetEncoder};
use crate::unet::{AddedCond, AttentionMode, Pass, UNetConfig};
use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The ControlNet-only fields of its `config.json` (the rest is read as a [`UNetConfig`]).
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct ControlNetExtra {
    pub conditioning_channels: i64,
    pub conditioning_embedding_out_channels: Vec<i64>,
    pub controlnet_conditioning_channel_order: String,
    pub global_pool_conditions: bool,
}

impl Default for ControlNetExtra {
    fn default() -> Self {
        Self {
            conditioning_channels: 3,
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            controlnet_conditioning_channel_order: "rgb".into(),
            global_pool_conditions: false,
        }
    }
}

/// `ControlNetConditioningEmbedding`: the picture down to the latent grid, SiLU between convolutions.
#[derive(Debug)]
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: &VarBuilder, in_ch: i64, channels: &[i64], out_ch: i64) -> Result<Self> {
        let conv_in = Conv2d::new(&(vb / "conv_in"), in_ch, channels[0], 3, 1, 1, true)?;
        let mut blocks = Vec::new();
        for i in 0..channels.len() - 1 {
            let (a, b) = (channels[i], channels[i + 1]);
            blocks.push(Conv2d::new(&(vb / "blocks" / (2 * i)), a, a, 3, 1, 1, true)?);
            blocks.push(Conv2d::new(&(vb / "blocks" / (2 * i + 1)), a, b, 3, 2, 1, true)?);
        }
        let conv_out = Conv2d::new(&(vb / "conv_out"), channels[channels.len() - 1], out_ch, 3, 1, 1, true)?;
        Ok(Self { conv_in, blocks, conv_out })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x).silu();
        for b in &self.blocks {
            h = b.forward(&h).silu();
        }
        self.conv_out.forward(&h)
    }
}

/// What a single file's weights failing their config is reported as: which layout was read, and which config
/// (a file, or the one inferred from the shapes) they were held against.
fn mismatch(plan: &ControlNetPlan, origin: &str) -> String {
    match &plan.config_origin {
        Some(p) => format!("{origin} ({}) does not match the config {}", plan.layout.describe(), p.display()),
        None => format!("{origin} ({}), config inferred from its shapes", plan.layout.describe()),
    }
}

/// The residuals one ControlNet evaluation gives the UNet.
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

#[derive(Debug)]
pub struct ControlNetModel {
    config: UNetConfig,
    extra: ControlNetExtra,
    encoder: UNetEncoder,
    cond_embedding: ConditioningEmbedding,
    controlnet_down_blocks: Vec<Conv2d>,
    controlnet_mid_block: Conv2d,
    mode: AttentionMode,
}

impl ControlNetModel {
    /// Load a ControlNet: a diffusers folder (`config.json` + weights), or a single `.safetensors` / `.pth` file in
    /// the original lllyasviel layout or diffusers' (see [`crate::convert::controlnet`]). Every weight problem is
    /// reported at once.
    pub fn load(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        if path.is_file() {
            return Self::load_single_file(path, None, kind, device);
        }
        let dir = path;
        let text = std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("cannot read {}", dir.join("config.json").display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", dir.display()))?;
        let class = json.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if class != "ControlNetModel" {
            bail!(
                "{} is not a ControlNet folder: its config's _class_name is {class:?}, expected \"ControlNetModel\"",
                dir.display()
            );
        }
        let (cfg, extra) = Self::parse_config(json, &dir.display().to_string())?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let model = Self::from_varbuilder(&vb, &cfg, extra)?;
        vb.finish("ControlNetModel", &[])?;
        Ok(model)
    }

    /// Load a single-file ControlNet, converted in memory. Its config is `config` when given, else the
    /// `config.json` of the diffusers ControlNet folder it sits in, else inferred from the tensor shapes.
    pub fn load_single_file(path: &Path, config: Option<&GivenConfig>, kind: Kind, device: Device) -> Result<Self> {
        let src = convert::open(path)?;
        let beside = match config {
            Some(_) => None,
            None => GivenConfig::beside(path)?,
        };
        let plan = convert::controlnet::plan(src.as_ref(), config.or(beside.as_ref()), false)?;
        let origin = src.describe();
        let (cfg, extra) =
            Self::parse_config(plan.config.clone(), &origin).with_context(|| match &plan.config_origin {
                Some(p) => format!("the config {}", p.display()),
                None => "the config inferred from the tensor shapes".to_string(),
            })?;
        let tensors = convert::controlnet::load_tensors(src.as_ref(), &plan)?;
        let vb = VarBuilder::from_tensors(tensors, &origin, kind, device);
        let model = Self::from_varbuilder(&vb, &cfg, extra)?;
        vb.finish("ControlNetModel", &[]).with_context(|| mismatch(&plan, &origin))?;
        Ok(model)
    }

    /// Check that a single-file plan's tensors build the model its config describes, from names and shapes only
    /// (every tensor a broadcast zero, so no weight memory is spent): `sd convert` refuses to write a folder that
    /// would not load. Every problem is reported at once.
    pub fn check_plan(plan: &ControlNetPlan, origin: &str) -> Result<()> {
        let (cfg, extra) = Self::parse_config(plan.config.clone(), origin)?;
        let mut tensors = HashMap::with_capacity(plan.items.len());
        for item in &plan.items {
            tensors.insert(
                item.name.clone(),
                Tensor::f_zeros([], (Kind::Float, Device::Cpu))?.f_expand(&item.shape, false)?,
            );
        }
        let vb = VarBuilder::from_tensors(tensors, origin, Kind::Float, Device::Cpu);
        Self::from_varbuilder(&vb, &cfg, extra)?;
        vb.finish("ControlNetModel", &[]).with_context(|| mismatch(plan, origin))?;
        Ok(())
    }

    /// A ControlNetModel `config.json` as the UNet-shaped part and the ControlNet-only fields.
    fn parse_config(json: serde_json::Value, origin: &str) -> Result<(UNetConfig, ControlNetExtra)> {
        let mut cfg: UNetConfig = serde_json::from_value(json.clone())
            .with_context(|| format!("{origin} is not a valid ControlNetModel config"))?;
        let extra: ControlNetExtra =
            serde_json::from_value(json).with_context(|| format!("{origin} is not a valid ControlNetModel config"))?;
        // A ControlNet has no expanding half; the UNet config's checks want one, so mirror the contracting half.
        cfg.up_block_types = cfg
            .down_block_types
            .iter()
            .rev()
            .map(|t| if t.contains("CrossAttn") { "CrossAttnUpBlock2D".to_string() } else { "UpBlock2D".to_string() })
            .collect();
        cfg.out_channels = cfg.in_channels;
        Ok((cfg, extra))
    }

    pub fn from_varbuilder(vb: &VarBuilder, cfg: &UNetConfig, extra: ControlNetExtra) -> Result<Self> {
        if extra.global_pool_conditions {
            bail!("unsupported ControlNet config: `global_pool_conditions` = true (shuffle-style ControlNets)");
        }
        if !matches!(extra.controlnet_conditioning_channel_order.as_str(), "rgb" | "bgr") {
            bail!(
                "unsupported ControlNet config: `controlnet_conditioning_channel_order` = {:?} (expected rgb or bgr)",
                extra.controlnet_conditioning_channel_order
            );
        }
        if extra.conditioning_embedding_out_channels.is_empty() {
            bail!("ControlNet config field `conditioning_embedding_out_channels` is empty");
        }
        let r = cfg.resolve()?;
        let act: Activation = activation("act_fn", &cfg.act_fn)?;
        let c0 = cfg.block_out_channels[0];
        let encoder = UNetEncoder::new(vb, cfg, &r, act)?;
        let cond_embedding = ConditioningEmbedding::new(
            &(vb / "controlnet_cond_embedding"),
            extra.conditioning_channels,
            &extra.conditioning_embedding_out_channels,
            c0,
        )?;
        // One zero convolution per skip connection: conv_in's output, then each resnet and each downsampler.
        let mut widths = vec![c0];
        for (i, block) in encoder.down_blocks.iter().enumerate() {
            let ch = r.down[i].channels;
            widths.extend(std::iter::repeat_n(ch, block.skip_count()));
        }
        let controlnet_down_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &ch)| Conv2d::new(&(vb / "controlnet_down_blocks" / i), ch, ch, 1, 1, 0, true))
            .collect::<Result<Vec<_>>>()?;
        let deepest = r.down[r.down.len() - 1].channels;
        let controlnet_mid_block = Conv2d::new(&(vb / "controlnet_mid_block"), deepest, deepest, 1, 1, 0, true)?;
        Ok(Self {
            config: cfg.clone(),
            extra,
            encoder,
            cond_embedding,
            controlnet_down_blocks,
            controlnet_mid_block,
            mode: AttentionMode::default(),
        })
    }

    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.mode = mode;
    }

    /// The UNet-shaped part of the config (cross-attention width and added conditioning decide which base
    /// models this ControlNet fits).
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn extra(&self) -> &ControlNetExtra {
        &self.extra
    }

    /// Residuals for one evaluation: `sample` and `timestep` as the UNet gets them, `cond` the control picture
    /// `[B, 3, H, W]` in [0, 1] at the image size, `scale` diffusers' `conditioning_scale`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        cond: &Tensor,
        scale: f64,
        added: Option<&AddedCond>,
    ) -> Result<ControlResiduals> {
        self.forward_with_mode(sample, timestep, encoder_hidden_states, cond, scale, false, added)
    }

    /// [`Self::forward`], with diffusers' `guess_mode`: the residuals are weighted from 0.1 (first skip) to 1.0
    /// (mid block) on a log scale — `logspace(-1, 0, skips + 1)`, 13 weights for SD1/SD2/SDXL — times `scale`, so
    /// the ControlNet's coarse features dominate when it runs without the unconditional half.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_mode(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        cond: &Tensor,
        scale: f64,
        guess_mode: bool,
        added: Option<&AddedCond>,
    ) -> Result<ControlResiduals> {
        let cfg = &self.config;
        let size = sample.size();
        if size.len() != 4 || size[1] != cfg.in_channels {
            bail!("ControlNet sample must be [batch, {}, height, width], got {size:?}", cfg.in_channels);
        }
        let batch = size[0];
        let csize = cond.size();
        if csize.len() != 4 || csize[0] != batch || csize[1] != self.extra.conditioning_channels {
            bail!(
                "the control image must be [batch {batch}, {}, height, width], got {csize:?}",
                self.extra.conditioning_channels
            );
        }
        let kind = self.encoder.conv_in.weight.kind();
        let sample = sample.to_kind(kind);
        let timesteps = match timestep.numel() {
            1 => timestep.reshape([1]).expand([batch], false),
            n if n as i64 == batch && timestep.dim() == 1 => timestep.shallow_clone(),
            _ => {
                bail!("timestep must be a scalar or have one value per batch item ({batch}), got {:?}", timestep.size())
            }
        };
        let emb = self.encoder.embed(cfg, &timesteps.to_device(sample.device()), batch, kind, added, None)?;
        let cond = if self.extra.controlnet_conditioning_channel_order == "bgr" {
            cond.flip([1])
        } else {
            cond.shallow_clone()
        };
        let embedded = self.cond_embedding.forward(&cond.to_kind(kind));
        let ctx = &encoder_hidden_states.to_kind(kind);
        let pass = Pass { mode: self.mode, hook: None };
        let Encoded { h, skips, .. } = self
            .encoder
            .forward(&sample, emb, ctx, &pass, Some(&embedded), None)
            .context("ControlNet (is the control image the generated image's size?)")?;
        let down: Vec<Tensor> =
            skips.iter().zip(&self.controlnet_down_blocks).map(|(s, conv)| conv.forward(s)).collect();
        let mid = self.controlnet_mid_block.forward(&h);
        if guess_mode {
            // As diffusers: an f32 weight vector on the device, multiplied by the scale, one 0-d weight per output.
            let n = down.len() as i64 + 1;
            let weights = Tensor::logspace(-1.0, 0.0, n, 10.0, (Kind::Float, sample.device())) * scale;
            let down = down.iter().enumerate().map(|(i, d)| d * weights.get(i as i64)).collect();
            let mid = mid * weights.get(n - 1);
            return Ok(ControlResiduals { down, mid });
        }
        let down = down.into_iter().map(|d| d * scale).collect();
        Ok(ControlResiduals { down, mid: mid * scale })
    }
}
