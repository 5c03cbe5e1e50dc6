//! The IP-Adapter flags of `sd generate`: one adapter per `--ip-adapter`, each with its `--ip-image`; `--ip-scale`
//! and `--ip-encoder` are given once (for every adapter) or once per adapter, in command-line order.

use super::UsageError;
use anyhow::{Context, Result};
use sd_core::limits;
use sd_pipeline::ip_adapter::IpAdapterInput;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct IpAdapterArgs {
    /// An IP-Adapter weight file in the original layout (ip-adapter_sd15.safetensors, ip-adapter-plus_sd15.bin,
    /// …); repeat for several adapters
    #[arg(long, value_name = "FILE")]
    pub ip_adapter: Vec<PathBuf>,
    /// The image prompt of each adapter (one per --ip-adapter)
    #[arg(long, value_name = "IMAGE")]
    pub ip_image: Vec<PathBuf>,
    /// How strongly the image prompt steers, 0–10 [default: 1] (once, or once per adapter)
    #[arg(long, value_name = "SCALE")]
    pub ip_scale: Vec<f64>,
    /// The image encoder folder (CLIPVisionModelWithProjection) [default: image_encoder/ beside the adapter file,
    /// then in the model folder] (once, or once per adapter)
    #[arg(long, value_name = "DIR")]
    pub ip_encoder: Vec<PathBuf>,
}

/// Value `i` of a per-adapter flag: absent → `None`, one value → that value, one per adapter → the i-th.
fn per_adapter<T: Clone>(flag: &str, values: &[T], n: usize, i: usize) -> Result<Option<T>, UsageError> {
    match values.len() {
        0 => Ok(None),
        1 => Ok(Some(values[0].clone())),
        k if k == n => Ok(Some(values[i].clone())),
        k => Err(UsageError(format!(
            "--{flag} is given {k} times for {n} --ip-adapter(s): give it once (for every adapter) or once per adapter"
        ))),
    }
}

impl IpAdapterArgs {
    /// Check counts, paths and values before anything is loaded.
    pub fn check(&self) -> Result<(), UsageError> {
        let n = self.ip_adapter.len();
        if n == 0 {
            let stray = [
                ("ip-image", self.ip_image.len()),
                ("ip-scale", self.ip_scale.len()),
                ("ip-encoder", self.ip_encoder.len()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, k)| *k > 0) {
                return Err(UsageError(format!("--{flag} needs --ip-adapter")));
            }
            return Ok(());
        }
        if n as u64 > limits::IP_ADAPTER_MAX_ADAPTERS {
            return Err(UsageError(format!(
                "--ip-adapter: {}",
                limits::exceeded(format!("{n} adapters"), "IP-Adapters", limits::IP_ADAPTER_MAX_ADAPTERS, "adapters")
            )));
        }
        if self.ip_image.len() != n {
            return Err(UsageError(format!(
                "{n} --ip-adapter given but {} --ip-image: give one image prompt per adapter, in the same order",
                self.ip_image.len()
            )));
        }
        for path in &self.ip_adapter {
            if !path.is_file() {
                let what = if path.is_dir() { "a folder" } else { "no such file" };
                return Err(UsageError(format!(
                    "--ip-adapter {}: {what}; expected an IP-Adapter weight file (.safetensors or .bin, e.g. \
                     ip-adapter_sd15.safetensors)",
                    path.display()
                )));
            }
        }
        for dir in &self.ip_encoder {
            if !dir.join("config.json").is_file() {
                return Err(UsageError(format!(
                    "--ip-encoder {}: not an image encoder folder (config.json missing); expected a \
                     CLIPVisionModelWithProjection folder such as IP-Adapter's models/image_encoder",
                    dir.display()
                )));
            }
        }
        for i in 0..n {
            let scale = per_adapter("ip-scale", &self.ip_scale, n, i)?.unwrap_or(1.0);
            per_adapter("ip-encoder", &self.ip_encoder, n, i)?;
            let probe = IpAdapterInput::new("", image::RgbImage::new(1, 1), scale);
            sd_pipeline::ip_adapter::validate(std::slice::from_ref(&probe))
                .map_err(|e| UsageError(format!("--ip-scale: {e:#}")))?;
        }
        Ok(())
    }

    /// The adapters with their image prompts read (before any model is loaded, so a bad picture fails fast);
    /// `model` is filled in by [`IpAdapterArgs::load`].
    pub fn inputs(&self) -> Result<Vec<IpAdapterInput>> {
        self.check()?;
        let n = self.ip_adapter.len();
        let mut out = Vec::with_capacity(n);
        for (i, path) in self.ip_image.iter().enumerate() {
            let image = sd_core::image_io::load_rgb(path).with_context(|| format!("--ip-image {}", path.display()))?;
            let scale = per_adapter("ip-scale", &self.ip_scale, n, i)?.unwrap_or(1.0);
            out.push(IpAdapterInput::new("", image, scale));
        }
        Ok(out)
    }

    /// Load every adapter (and its encoder) into `sd` and name the inputs after them.
    pub fn load(&self, sd: &mut sd_pipeline::loader::StableDiffusion, inputs: &mut [IpAdapterInput]) -> Result<()> {
        let n = self.ip_adapter.len();
        for (i, (input, path)) in inputs.iter_mut().zip(&self.ip_adapter).enumerate() {
            let encoder = per_adapter("ip-encoder", &self.ip_encoder, n, i)?;
            input.model = sd
                .load_ip_adapter(path, encoder.as_deref().map(Path::new))
                .with_context(|| format!("--ip-adapter {}", path.display()))?;
        }
        Ok(())
    }
}
