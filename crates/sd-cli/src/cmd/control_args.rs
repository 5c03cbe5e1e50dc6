//! The ControlNet flags of `sd generate`: one unit per `--controlnet`. Every per-unit flag is given either once
//! (it applies to every unit) or once per unit (the n-th value goes to the n-th `--controlnet`, in command-line
//! order); any other count is a usage error naming the flag.

use super::UsageError;
use anyhow::{Context, Result};
use sd_pipeline::control::{ControlInput, Preprocess, ResizeMode};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ControlArgs {
    /// A ControlNet: a diffusers folder (ControlNetModel) or a single .safetensors/.pth file (original lllyasviel
    /// layout or diffusers'); repeat for several units (their residuals are summed)
    #[arg(long, value_name = "DIR|FILE")]
    pub controlnet: Vec<PathBuf>,
    /// The control picture of each unit (one per --controlnet)
    #[arg(long, value_name = "IMAGE")]
    pub control_image: Vec<PathBuf>,
    /// ControlNet strength, diffusers' controlnet_conditioning_scale [default: 1] (once, or once per unit)
    #[arg(long, value_name = "SCALE")]
    pub control_scale: Vec<f64>,
    /// Fraction of the steps at which the unit starts acting [default: 0] (once, or once per unit)
    #[arg(long, value_name = "FRACTION")]
    pub control_start: Vec<f64>,
    /// Fraction of the steps after which it stops [default: 1] (once, or once per unit)
    #[arg(long, value_name = "FRACTION")]
    pub control_end: Vec<f64>,
    /// Fitting the picture to the output size: just (stretch), crop (cover and centre-crop), fill (fit and pad
    /// with the border's median colour) [default: crop] (once, or once per unit)
    #[arg(long, value_name = "MODE")]
    pub control_resize: Vec<String>,
    /// Turn the picture into a map first: none (it already is one) or canny [default: none] (once, or once per unit)
    #[arg(long, value_name = "MODULE")]
    pub control_preprocess: Vec<String>,
    /// Canny lower threshold [default: 100] (once, or once per unit)
    #[arg(long, value_name = "T")]
    pub canny_low: Vec<f64>,
    /// Canny upper threshold [default: 200] (once, or once per unit)
    #[arg(long, value_name = "T")]
    pub canny_high: Vec<f64>,
    /// Guess mode for every unit (A1111 "ControlNet is more important"): ControlNets see only the prompt half of
    /// the guidance batch, deeper residuals weighted more (diffusers' guess_mode)
    #[arg(long)]
    pub control_guess_mode: bool,
}

/// Value `i` of a per-unit flag: absent → `default`, one value → that value, `units` values → the i-th.
fn per_unit<T: Clone>(flag: &str, values: &[T], units: usize, i: usize, default: T) -> Result<T, UsageError> {
    match values.len() {
        0 => Ok(default),
        1 => Ok(values[0].clone()),
        n if n == units => Ok(values[i].clone()),
        n => Err(UsageError(format!(
            "--{flag} is given {n} times for {units} --controlnet unit(s): give it once (for every unit) or once per unit"
        ))),
    }
}

impl ControlArgs {
    /// Check counts and values before anything is loaded.
    pub fn check(&self) -> Result<(), UsageError> {
        let units = self.controlnet.len();
        if units == 0 {
            let stray = [
                ("control-image", self.control_image.len()),
                ("control-scale", self.control_scale.len()),
                ("control-start", self.control_start.len()),
                ("control-end", self.control_end.len()),
                ("control-resize", self.control_resize.len()),
                ("control-preprocess", self.control_preprocess.len()),
                ("canny-low", self.canny_low.len()),
                ("canny-high", self.canny_high.len()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, n)| *n > 0) {
                return Err(UsageError(format!("--{flag} needs --controlnet")));
            }
            if self.control_guess_mode {
                return Err(UsageError("--control-guess-mode needs --controlnet".into()));
            }
            return Ok(());
        }
        if self.control_image.len() != units {
            return Err(UsageError(format!(
                "{units} --controlnet given but {} --control-image: give one control image per ControlNet, in the same order",
                self.control_image.len()
            )));
        }
        if units > sd_pipeline::control::MAX_UNITS {
            return Err(UsageError(format!(
                "{units} --controlnet given; at most {} units are supported",
                sd_pipeline::control::MAX_UNITS
            )));
        }
        for path in &self.controlnet {
            if !path.is_file() && !path.join("config.json").is_file() {
                let what = if path.is_dir() {
                    "not a ControlNet folder (config.json missing)"
                } else {
                    "no such file or folder"
                };
                return Err(UsageError(format!(
                    "--controlnet {}: {what}; expected a diffusers ControlNet folder or a .safetensors/.pth file",
                    path.display()
                )));
            }
        }
        for i in 0..units {
            self.settings(i)?;
        }
        Ok(())
    }

    /// Unit `i`'s settings, with the picture still unread.
    fn settings(&self, i: usize) -> Result<ControlInput, UsageError> {
        let n = self.controlnet.len();
        let resize: String = per_unit("control-resize", &self.control_resize, n, i, "crop".into())?;
        let resize: ResizeMode = resize.parse().map_err(|e| UsageError(format!("--control-resize: {e:#}")))?;
        let module: String = per_unit("control-preprocess", &self.control_preprocess, n, i, "none".into())?;
        let low = per_unit("canny-low", &self.canny_low, n, i, 100.0)?;
        let high = per_unit("canny-high", &self.canny_high, n, i, 200.0)?;
        let preprocess = match module.to_ascii_lowercase().as_str() {
            "none" => {
                let thresholds = !self.canny_low.is_empty() || !self.canny_high.is_empty();
                if thresholds && self.control_preprocess.is_empty() {
                    return Err(UsageError("--canny-low/--canny-high need --control-preprocess canny".into()));
                }
                Preprocess::None
            }
            "canny" => Preprocess::Canny { low, high },
            other => {
                return Err(UsageError(format!("--control-preprocess {other:?}: expected none or canny")));
            }
        };
        let mut unit = ControlInput::new("", image::RgbImage::new(1, 1));
        unit.scale = per_unit("control-scale", &self.control_scale, n, i, 1.0)?;
        unit.start = per_unit("control-start", &self.control_start, n, i, 0.0)?;
        unit.end = per_unit("control-end", &self.control_end, n, i, 1.0)?;
        unit.resize = resize;
        unit.preprocess = preprocess;
        unit.guess_mode = self.control_guess_mode;
        sd_pipeline::control::validate(std::slice::from_ref(&unit))
            .map_err(|e| UsageError(format!("--controlnet {}: {e:#}", self.controlnet[i].display())))?;
        Ok(unit)
    }

    /// The units with their pictures read (before any model is loaded, so a bad picture fails fast); their `model`
    /// is filled in once the ControlNets are loaded.
    pub fn units(&self) -> Result<Vec<ControlInput>> {
        self.check()?;
        let mut out = Vec::with_capacity(self.controlnet.len());
        for (i, path) in self.control_image.iter().enumerate() {
            let mut unit = self.settings(i)?;
            unit.image =
                sd_core::image_io::load_rgb(path).with_context(|| format!("--control-image {}", path.display()))?;
            out.push(unit);
        }
        Ok(out)
    }
}
