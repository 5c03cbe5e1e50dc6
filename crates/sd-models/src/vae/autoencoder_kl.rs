//! `AutoencoderKL` (diffusers `models/autoencoders/autoencoder_kl.py`): images ↔ the latent space the UNet
//! works in, with optional tiling for large images.

use super::coders::{Decoder, Encoder};
use super::config::VaeConfig;
use super::tiling::TilingConfig;
use crate::nn::Conv2d;
use anyhow::{bail, Context, Result};
use sd_core::weights::VarBuilder;
use sd_core::TorchGenerator;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The encoder's posterior N(mean, exp(logvar)) per latent element (diffusers `DiagonalGaussianDistribution`).
#[derive(Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Split encoder moments `[B, 2C, h, w]` into mean and log-variance along channels.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let parts = moments.f_chunk(2, 1).context("splitting VAE moments")?;
        let [mean, logvar] =
            <[Tensor; 2]>::try_from(parts).map_err(|_| anyhow::anyhow!("VAE moments have an odd channel count"))?;
        Ok(Self { mean, logvar: logvar.clamp(-30.0, 20.0) })
    }

    /// The most likely latent (what img2img uses with `sample_mode="argmax"`).
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// mean + std · ε with ε drawn like diffusers' `randn_tensor(mean.shape, generator, dtype=mean.dtype)`.
    pub fn sample(&self, generator: &mut TorchGenerator) -> Tensor {
        let eps = generator.randn(&self.mean.size(), self.mean.kind(), self.mean.device());
        let std = (&self.logvar * 0.5).exp();
        &self.mean + std * eps
    }
}

/// The KL-regularised autoencoder of Stable Diffusion.
#[derive(Debug)]
pub struct AutoencoderKL {
    cfg: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    tiling: Option<TilingConfig>,
    kind: Kind,
    device: Device,
}

impl AutoencoderKL {
    /// Load a diffusers `vae/` folder (`config.json` + safetensors), accepting both attention naming schemes.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        Self::load_with(dir, kind, device, false)
    }

    /// [`Self::load`] with channels-last convolution weights when `channels_last` (see
    /// `VarBuilder::with_channels_last`); decoded images and encoded moments come back contiguous either way.
    pub fn load_with(dir: &Path, kind: Kind, device: Device, channels_last: bool) -> Result<Self> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        // Packed weights (bf16 on the CPU): oneDNN's per-call weight reorder is lost in the VAE's large convolutions
        // (the 512 px decode measured the same packed or not), but packing is also where the 256- and 512-channel
        // 3×3 layers switch to Winograd's F(2×2, 3×3) (`sd_core::winograd`), which is faster there.
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?
            .with_channels_last(channels_last)?
            .with_winograd(true)?;
        let vae = Self::from_varbuilder(&vb, &cfg)?;
        vb.finish("the VAE (AutoencoderKL)", &[])?;
        Ok(vae)
    }

    /// Build from any weight source; the caller runs `vb.finish` to learn about missing/unused tensors.
    pub fn from_varbuilder(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        cfg.validate()?;
        let lc = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&(vb / "encoder"), cfg)?,
            decoder: Decoder::new(&(vb / "decoder"), cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::new(&(vb / "quant_conv"), 2 * lc, 2 * lc, 1, 1, 0, true)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::new(&(vb / "post_quant_conv"), lc, lc, 1, 1, 0, true)?)
            } else {
                None
            },
            cfg: cfg.clone(),
            tiling: None,
            kind: vb.kind(),
            device: vb.device(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Where inputs are sent: where the weights were loaded, unless an offloading caller keeps them elsewhere
    /// between runs and brings them here (or streams them here) when the model runs.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    /// 2^(len(block_out_channels) - 1): image pixels per latent pixel.
    pub fn scale_factor(&self) -> i64 {
        self.cfg.scale_factor()
    }

    /// Turn tiled encode/decode on (`Some`) or off (`None`); see [`TilingConfig`].
    pub fn set_tiling(&mut self, tiling: Option<TilingConfig>) {
        self.tiling = tiling;
    }

    pub fn tiling(&self) -> Option<&TilingConfig> {
        self.tiling.as_ref()
    }

    /// Image in [-1, 1], `[B, in_channels, H, W]` → posterior over latents `[B, latent_channels, H/f, W/f]`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let x = self.check_input(x, self.cfg.in_channels, "image", "in_channels")?;
        let _heap = sd_core::alloc::HeapOnly::new();
        let (h, w) = (x.size()[2], x.size()[3]);
        let moments = match &self.tiling {
            Some(t) if h > t.tile_sample_min_size || w > t.tile_sample_min_size => {
                super::tiling::tiled_encode(&x, t, self.scale_factor(), |tile| self.encode_moments(tile))?
            }
            _ => self.encode_moments(&x)?,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// Raw latents (already divided by `scaling_factor`, shift undone) → image in ≈[-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.check_input(z, self.cfg.latent_channels, "latents", "latent_channels")?;
        let _heap = sd_core::alloc::HeapOnly::new();
        let (h, w) = (z.size()[2], z.size()[3]);
        match &self.tiling {
            Some(t)
                if h > t.tile_latent_min_size(self.scale_factor())
                    || w > t.tile_latent_min_size(self.scale_factor()) =>
            {
                super::tiling::tiled_decode(&z, t, self.scale_factor(), |tile| self.decode_tile(tile))
            }
            _ => self.decode_tile(&z),
        }
    }

    fn encode_moments(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(x)?;
        Ok(match &self.quant_conv {
            Some(q) => q.forward(&h),
            None => h,
        }
        .contiguous())
    }

    fn decode_tile(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z.shallow_clone(),
        };
        Ok(self.decoder.forward(&z)?.contiguous())
    }

    /// Check rank and channels, and bring the tensor to the model's dtype and device.
    fn check_input(&self, x: &Tensor, channels: i64, what: &str, field: &str) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 {
            bail!("VAE {what} must be a [batch, channels, height, width] tensor, got shape {size:?}");
        }
        if size[1] != channels {
            bail!("VAE {what} have {} channels but the VAE config's `{field}` is {channels} (shape {size:?})", size[1]);
        }
        if size[2] == 0 || size[3] == 0 || size[0] == 0 {
            bail!("VAE {what} tensor is empty (shape {size:?})");
        }
        if !x.is_floating_point() {
            bail!("VAE {what} must be a floating-point tensor, got {:?}", x.kind());
        }
        Ok(x.to_device(self.device).to_kind(self.kind))
    }
}
