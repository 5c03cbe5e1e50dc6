//! `AutoencoderTiny`, i.e. TAESD (madebyollin/taesd `taesd.py`; diffusers `models/autoencoders/autoencoder_tiny.py`):
//! a plain conv net that maps images in [0, 1] straight to UNet-space latents and back, ~100× cheaper than the
//! KL VAE. Used for previews and low-memory decoding.
//!
//! Two weight layouts exist for the same network: diffusers' (`encoder.layers.N`, `decoder.layers.N`) and the
//! original `nn.Sequential` files (`N.conv.0.weight`), whose decoder counts its leading `Clamp` module as layer 0,
//! so original decoder index N is diffusers' N - 1. Both are built by the same code with an index offset.

pub use super::tiny_config::TinyConfig;
use crate::nn::{Activation, Conv2d};
use anyhow::{anyhow, bail, Context, Result};
use sd_core::weights::VarBuilder;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// conv → act → conv → act → conv, plus a skip, then ReLU (`AutoencoderTinyBlock` / taesd `Block`).
#[derive(Debug)]
struct TinyBlock {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
    act: Activation,
}

impl TinyBlock {
    fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64, act: Activation) -> Result<Self> {
        let c = vb / "conv";
        Ok(Self {
            convs: [
                Conv2d::new(&(&c / 0), in_ch, out_ch, 3, 1, 1, true)?,
                Conv2d::new(&(&c / 2), out_ch, out_ch, 3, 1, 1, true)?,
                Conv2d::new(&(&c / 4), out_ch, out_ch, 3, 1, 1, true)?,
            ],
            skip: if in_ch != out_ch {
                Some(Conv2d::new(&(vb / "skip"), in_ch, out_ch, 1, 1, 0, false)?)
            } else {
                None
            },
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.act.forward(&self.convs[0].forward(x));
        let h = self.act.forward(&self.convs[1].forward(&h));
        let h = self.convs[2].forward(&h);
        let skip = match &self.skip {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        (h + skip).relu()
    }
}

#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Block(TinyBlock),
    Act(Activation),
    Upsample(i64),
}

/// An `nn.Sequential` whose layer `i` loads from `vb / (i + offset)`.
#[derive(Debug)]
struct Sequential {
    layers: Vec<Layer>,
}

impl Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = match l {
                Layer::Conv(c) => c.forward(&h),
                Layer::Block(b) => b.forward(&h),
                Layer::Act(a) => a.forward(&h),
                Layer::Upsample(s) => {
                    let (ht, wd) = (h.size()[2], h.size()[3]);
                    h.f_upsample_nearest2d([ht * s, wd * s], *s as f64, *s as f64).context("TAESD upsampling")?
                }
            };
        }
        Ok(h)
    }
}

/// Layer builder that tracks the Sequential index.
struct Builder<'a> {
    vb: &'a VarBuilder,
    offset: i64,
    layers: Vec<Layer>,
}

impl Builder<'_> {
    fn at(&self) -> VarBuilder {
        self.vb / (self.layers.len() as i64 + self.offset)
    }
    fn conv(&mut self, i: i64, o: i64, stride: i64, bias: bool) -> Result<()> {
        let c = Conv2d::new(&self.at(), i, o, 3, stride, 1, bias)?;
        self.layers.push(Layer::Conv(c));
        Ok(())
    }
    fn block(&mut self, ch: i64, act: Activation) -> Result<()> {
        let b = TinyBlock::new(&self.at(), ch, ch, act)?;
        self.layers.push(Layer::Block(b));
        Ok(())
    }
}

/// diffusers `EncoderTiny` layer list.
fn encoder(vb: &VarBuilder, cfg: &TinyConfig, offset: i64) -> Result<Sequential> {
    let act = Activation::parse(&cfg.act_fn)?;
    let mut b = Builder { vb, offset, layers: Vec::new() };
    for (i, (&ch, &n)) in cfg.encoder_block_out_channels.iter().zip(&cfg.num_encoder_blocks).enumerate() {
        if i == 0 {
            b.conv(cfg.in_channels, ch, 1, true)?;
        } else {
            b.conv(ch, ch, 2, false)?;
        }
        for _ in 0..n {
            b.block(ch, act)?;
        }
    }
    let last = *cfg.encoder_block_out_channels.last().ok_or_else(|| anyhow!("empty encoder_block_out_channels"))?;
    b.conv(last, cfg.latent_channels, 1, true)?;
    Ok(Sequential { layers: b.layers })
}

/// diffusers `DecoderTiny` layer list (without the leading soft clamp, which has no weights).
fn decoder(vb: &VarBuilder, cfg: &TinyConfig, offset: i64) -> Result<Sequential> {
    let act = Activation::parse(&cfg.act_fn)?;
    let chans = &cfg.decoder_block_out_channels;
    let mut b = Builder { vb, offset, layers: Vec::new() };
    b.conv(cfg.latent_channels, chans[0], 1, true)?;
    b.layers.push(Layer::Act(act));
    for (i, (&ch, &n)) in chans.iter().zip(&cfg.num_decoder_blocks).enumerate() {
        let is_final = i + 1 == chans.len();
        for _ in 0..n {
            b.block(ch, act)?;
        }
        if !is_final {
            b.layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
        }
        b.conv(ch, if is_final { cfg.out_channels } else { ch }, 1, is_final)?;
    }
    Ok(Sequential { layers: b.layers })
}

/// TAESD: images in [0, 1] ↔ UNet-space latents. Either half may be absent (e.g. a decoder-only preview model).
#[derive(Debug)]
pub struct AutoencoderTiny {
    cfg: TinyConfig,
    encoder: Option<Sequential>,
    decoder: Option<Sequential>,
    kind: Kind,
    device: Device,
}

impl AutoencoderTiny {
    /// A diffusers `AutoencoderTiny` folder (`config.json` + safetensors).
    pub fn load_diffusers(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: TinyConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid AutoencoderTiny config", path.display()))?;
        cfg.validate().with_context(|| format!("in {}", path.display()))?;
        let weights = sd_core::model_dir::find_weights(dir, None)?;
        let vb = VarBuilder::from_safetensors(&[weights], kind, device)?;
        let model = Self {
            encoder: Some(encoder(&(&vb / "encoder" / "layers"), &cfg, 0)?),
            decoder: Some(decoder(&(&vb / "decoder" / "layers"), &cfg, 0)?),
            cfg,
            kind,
            device,
        };
        vb.finish("the tiny autoencoder (AutoencoderTiny)", &[])?;
        Ok(model)
    }

    /// Original taesd.py files (`taesd_encoder.safetensors`, `taesd_decoder.safetensors`); at least one is needed.
    pub fn load_taesd_files(
        encoder_path: Option<&Path>,
        decoder_path: Option<&Path>,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        if encoder_path.is_none() && decoder_path.is_none() {
            bail!("TAESD needs an encoder file, a decoder file, or both");
        }
        let mut cfg = TinyConfig::default();
        let open = |p: &Path| VarBuilder::from_safetensors(&[p.to_path_buf()], kind, device);
        let enc_vb = encoder_path.map(open).transpose()?;
        let dec_vb = decoder_path.map(open).transpose()?;
        // Latent channels from the stored shapes (4 for SD/SDXL; 16 for the SD3/FLUX variants).
        if let Some(s) = dec_vb.as_ref().and_then(|vb| vb.shape_of("1.weight")).filter(|s| s.len() == 4) {
            cfg.latent_channels = s[1];
        } else if let Some(s) = enc_vb.as_ref().and_then(|vb| vb.shape_of("14.weight")).filter(|s| s.len() == 4) {
            cfg.latent_channels = s[0];
        }
        let enc = match &enc_vb {
            Some(vb) => {
                let e = encoder(vb, &cfg, 0)?;
                vb.finish("the TAESD encoder", &[])?;
                Some(e)
            }
            None => None,
        };
        let dec = match &dec_vb {
            Some(vb) => {
                let d = decoder(vb, &cfg, 1)?;
                vb.finish("the TAESD decoder", &[])?;
                Some(d)
            }
            None => None,
        };
        Ok(Self { cfg, encoder: enc, decoder: dec, kind, device })
    }

    /// `taesd_{encoder,decoder}.safetensors` (SD1/SD2 latents) or `taesdxl_*` (SDXL latents) from `dir`.
    pub fn load_taesd_dir(dir: &Path, family_xl: bool, kind: Kind, device: Device) -> Result<Self> {
        let prefix = if family_xl { "taesdxl" } else { "taesd" };
        let pick = |half: &str| -> Option<PathBuf> {
            let p = dir.join(format!("{prefix}_{half}.safetensors"));
            p.exists().then_some(p)
        };
        let (enc, dec) = (pick("encoder"), pick("decoder"));
        if enc.is_none() && dec.is_none() {
            bail!(
                "no TAESD weights in {}: expected {prefix}_encoder.safetensors and/or {prefix}_decoder.safetensors",
                dir.display()
            );
        }
        Self::load_taesd_files(enc.as_deref(), dec.as_deref(), kind, device)
    }

    pub fn config(&self) -> &TinyConfig {
        &self.cfg
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// Image in [0, 1], `[B, 3, H, W]` → latents already in the UNet's space (no scaling factor).
    pub fn encode(&self, x_unit: &Tensor) -> Result<Tensor> {
        let enc = self.encoder.as_ref().ok_or_else(|| anyhow!("this TAESD model was loaded without an encoder"))?;
        let x = self.check(x_unit, self.cfg.in_channels, "image", "in_channels")?;
        enc.forward(&x)
    }

    /// UNet-space latents → image in ≈[0, 1] (the caller clamps).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let dec = self.decoder.as_ref().ok_or_else(|| anyhow!("this TAESD model was loaded without a decoder"))?;
        let z = self.check(latents, self.cfg.latent_channels, "latents", "latent_channels")?;
        // Soft clamp to ±3 (taesd `Clamp`), which the decoder was trained behind.
        dec.forward(&((z / 3.0).tanh() * 3.0))
    }

    /// Where inputs are sent: where the weights were loaded, unless an offloading caller keeps them elsewhere
    /// between runs and brings them here (or streams them here) when the model runs.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    fn check(&self, x: &Tensor, channels: i64, what: &str, field: &str) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[1] != channels || size.contains(&0) {
            bail!("TAESD {what} must be [batch, {channels} (`{field}`), height, width], got shape {size:?}");
        }
        if !x.is_floating_point() {
            bail!("TAESD {what} must be a floating-point tensor, got {:?}", x.kind());
        }
        Ok(x.to_device(self.device).to_kind(self.kind))
    }
}
