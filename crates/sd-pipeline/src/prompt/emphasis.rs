//! How `(word:1.3)` weights act on the text encoder's output (A1111 `modules/sd_emphasis.py`).

use anyhow::{bail, Context, Result};
use std::fmt;
use std::str::FromStr;
use tch::Tensor;

/// A1111's "Emphasis mode" setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emphasis {
    /// Scale each token's output vector by its weight, then rescale the whole chunk so its mean is unchanged
    /// (A1111's default; the mean restoration keeps strong weights from washing out the image).
    #[default]
    Original,
    /// Scale by the weights without restoring the mean (A1111 "No norm"; often better for SDXL).
    NoNorm,
    /// Parse the syntax (brackets disappear, BREAK works) but use no weights.
    Ignore,
    /// No syntax at all: brackets, colons and BREAK are ordinary text.
    None,
}

impl FromStr for Emphasis {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
            "original" => Ok(Self::Original),
            "no-norm" | "nonorm" => Ok(Self::NoNorm),
            "ignore" => Ok(Self::Ignore),
            "none" => Ok(Self::None),
            _ => bail!("unknown emphasis mode `{s}`: expected original, no-norm, ignore or none"),
        }
    }
}

impl fmt::Display for Emphasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Original => "original",
            Self::NoNorm => "no-norm",
            Self::Ignore => "ignore",
            Self::None => "none",
        })
    }
}

/// Apply `multipliers` (one per token) to `z` of shape `[1, tokens, features]`.
pub fn apply_emphasis(z: &Tensor, multipliers: &[f32], emphasis: Emphasis) -> Result<Tensor> {
    if matches!(emphasis, Emphasis::Ignore | Emphasis::None) {
        return Ok(z.shallow_clone());
    }
    let size = z.size();
    if size.len() != 3 || size[1] != multipliers.len() as i64 {
        bail!("emphasis: encoder output has shape {size:?}, expected [1, {}, D]", multipliers.len());
    }
    let mults = Tensor::from_slice(multipliers).to_device(z.device()).to_kind(z.kind()).reshape([1, -1, 1]);
    let original_mean = z.f_mean(None).context("emphasis: mean of the encoder output")?;
    let weighted = z.f_mul(&mults).context("emphasis: multiplying by the weights")?;
    if emphasis == Emphasis::NoNorm {
        return Ok(weighted);
    }
    let new_mean = weighted.f_mean(None)?;
    // Same order of operations as the reference: z * (old_mean / new_mean).
    Ok(weighted.f_mul(&original_mean.f_div(&new_mean)?)?)
}

/// Whether a prompt uses weights at all (skips work for the plain case and keeps it bit-identical to diffusers).
pub fn all_ones(multipliers: &[f32]) -> bool {
    multipliers.iter().all(|&m| m == 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("no-norm".parse::<Emphasis>().unwrap(), Emphasis::NoNorm);
        assert_eq!("No norm".parse::<Emphasis>().unwrap(), Emphasis::NoNorm);
        assert_eq!("Original".parse::<Emphasis>().unwrap(), Emphasis::Original);
        assert!("strong".parse::<Emphasis>().is_err());
    }

    #[test]
    fn original_restores_mean() {
        let z = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([1, 3, 2]);
        let m = [1.0f32, 2.0, 0.5];
        let out = apply_emphasis(&z, &m, Emphasis::Original).unwrap();
        let mean_in = z.mean(None).double_value(&[]);
        let mean_out = out.mean(None).double_value(&[]);
        assert!((mean_in - mean_out).abs() < 1e-6);
        // weighted = [1,2,6,8,2.5,3] (mean 22.5/6), scale = 3.5 / 3.75.
        let want = [1.0, 2.0, 6.0, 8.0, 2.5, 3.0].map(|v: f64| v * 3.5 / 3.75);
        let got: Vec<f32> = Vec::try_from(out.flatten(0, -1)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
        let nn: Vec<f32> = Vec::try_from(apply_emphasis(&z, &m, Emphasis::NoNorm).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(nn, vec![1.0, 2.0, 6.0, 8.0, 2.5, 3.0]);
        assert!(apply_emphasis(&z, &[1.0], Emphasis::Original).is_err());
    }
}
