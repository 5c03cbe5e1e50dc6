//! Whether an SD3 / SD3.5 model's weights fit in memory, checked from the safetensors headers before any of them
//! load, with the flag that makes them fit when they do not.
//!
//! SD3.5 Large is an 8 B-parameter transformer plus a 4.7 B-parameter T5: 27.6 GB in bf16, more than a 24 GB
//! machine has. Without the check the load runs until the kernel's OOM killer ends the process, with no message.
//! `sd generate` loads in two stages (the text encoders, which encode the prompts and are freed, then the
//! transformer), so it needs the larger stage; a resident server keeps everything and needs the sum. Only the
//! weights are counted (the activations of a step are small beside them, and a VAE decode that does not fit is
//! tiled): a refusal is never a false alarm.

use anyhow::{Context, Result};
use sd_core::model_dir::find_weights;
use sd_core::weights::SafeTensorsFiles;
use std::path::Path;
use tch::Kind;

/// Bytes each part of an SD3 folder takes once loaded in one dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sd3Weights {
    pub transformer: u64,
    /// CLIP-L and CLIP-G together.
    pub clips: u64,
    /// T5 (0 when the folder has none).
    pub t5: u64,
    pub vae: u64,
}

/// How the weights are held: all at once (a server), or the text encoders first and the transformer after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    AllLoaded,
    Staged,
}

impl Sd3Weights {
    /// Read from the component folders' headers (sharded files included), as loaded in `kind`.
    pub fn of_folder(root: &Path, kind: Kind) -> Result<Self> {
        let bytes = |component: &str| -> Result<u64> {
            let dir = root.join(component);
            if !dir.is_dir() {
                return Ok(0);
            }
            let files = SafeTensorsFiles::open_path(&find_weights(&dir, None)?)
                .with_context(|| format!("reading the weights of {component}/"))?;
            Ok(files.loaded_bytes(kind))
        };
        Ok(Self {
            transformer: bytes("transformer")?,
            clips: bytes("text_encoder")? + bytes("text_encoder_2")?,
            t5: bytes("text_encoder_3")?,
            vae: bytes("vae")?,
        })
    }

    /// The weights resident at the worst moment: with `t5` loaded or not.
    pub fn peak(&self, residency: Residency, t5: bool) -> u64 {
        let t5 = if t5 { self.t5 } else { 0 };
        match residency {
            Residency::AllLoaded => self.transformer + self.clips + t5 + self.vae,
            Residency::Staged => (self.clips + t5).max(self.transformer) + self.vae,
        }
    }

    /// These weights in another floating-point width (`from` and `to` are element sizes in bytes).
    fn scaled(&self, from: u64, to: u64) -> Self {
        let s = |b: u64| b / from.max(1) * to;
        Self { transformer: s(self.transformer), clips: s(self.clips), t5: s(self.t5), vae: s(self.vae) }
    }
}

/// `Ok` when the weights fit in `available` bytes (or availability is unknown); otherwise an error that says what
/// each part takes and which of `--dtype bf16` and `--no-t5` makes the model fit, or that neither does.
pub fn check_fits(w: &Sd3Weights, kind: Kind, t5: bool, residency: Residency, available: Option<u64>) -> Result<()> {
    let Some(available) = available else { return Ok(()) };
    let need = w.peak(residency, t5);
    if need <= available {
        return Ok(());
    }
    let width = kind.elt_size_in_bytes() as u64;
    let half = (width > 2).then(|| w.scaled(width, 2));
    let mut fixes: Vec<(&str, u64)> = Vec::new();
    if let Some(h) = &half {
        fixes.push(("--dtype bf16", h.peak(residency, t5)));
    }
    if t5 && w.t5 > 0 {
        fixes.push((
            "--no-t5 (T5's part of the prompt becomes zeros, as in diffusers without text_encoder_3)",
            w.peak(residency, false),
        ));
        if let Some(h) = &half {
            fixes.push(("--dtype bf16 --no-t5", h.peak(residency, false)));
        }
    }
    let parts = format!(
        "transformer {}, CLIP-L + CLIP-G {}{}, VAE {}",
        gb(w.transformer),
        gb(w.clips),
        if t5 && w.t5 > 0 { format!(", T5 {}", gb(w.t5)) } else { String::new() },
        gb(w.vae)
    );
    let how = match residency {
        Residency::AllLoaded => "all loaded at once",
        Residency::Staged => "the text encoders, then the transformer",
    };
    let advice = match fixes.iter().find(|(_, n)| *n <= available) {
        Some((flag, n)) => format!("run with {flag}: that needs {}", gb(*n)),
        None => "it does not fit even in bf16 without T5; use a machine with more memory".to_string(),
    };
    anyhow::bail!(
        "this SD3 model's weights need {} in {kind:?} ({how}: {parts}) and {} is available; {advice}",
        gb(need),
        gb(available)
    )
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    /// SD3.5 Large's parameter counts in bf16 (transformer 8.1 B, CLIP-L + G 0.82 B, T5 4.76 B, VAE 0.08 B).
    fn large_bf16() -> Sd3Weights {
        Sd3Weights { transformer: 16_300_000_000, clips: 1_640_000_000, t5: 9_520_000_000, vae: 170_000_000 }
    }

    #[test]
    fn staged_needs_the_larger_stage_and_resident_the_sum() {
        let w = large_bf16();
        assert_eq!(w.peak(Residency::Staged, true), 16_470_000_000);
        assert_eq!(w.peak(Residency::AllLoaded, true), 27_630_000_000);
        assert_eq!(w.peak(Residency::AllLoaded, false), 18_110_000_000);
        assert!(check_fits(&w, Kind::BFloat16, true, Residency::Staged, Some(22 * GB)).is_ok());
        assert!(check_fits(&w, Kind::BFloat16, true, Residency::AllLoaded, None).is_ok());
    }

    #[test]
    fn the_error_names_the_flag_that_fits() {
        let w = large_bf16();
        let e = check_fits(&w, Kind::BFloat16, true, Residency::AllLoaded, Some(22 * GB)).unwrap_err().to_string();
        assert!(e.contains("need 27.6 GB") && e.contains("22.0 GB is available"), "{e}");
        assert!(e.contains("T5 9.5 GB") && e.contains("run with --no-t5") && e.contains("needs 18.1 GB"), "{e}");
        // f32: twice the bytes; bf16 alone fits when staged
        let f32w = w.scaled(2, 4);
        let e = check_fits(&f32w, Kind::Float, true, Residency::Staged, Some(22 * GB)).unwrap_err().to_string();
        assert!(e.contains("need 32.9 GB in Float") && e.contains("run with --dtype bf16: that needs 16.5 GB"), "{e}");
        // resident in f32 on 22 GB: only both flags together fit
        let e = check_fits(&f32w, Kind::Float, true, Residency::AllLoaded, Some(22 * GB)).unwrap_err().to_string();
        assert!(e.contains("run with --dtype bf16 --no-t5"), "{e}");
        // nothing fits
        let e = check_fits(&w, Kind::BFloat16, false, Residency::Staged, Some(8 * GB)).unwrap_err().to_string();
        assert!(e.contains("does not fit even in bf16 without T5") && !e.contains("T5 9.5"), "{e}");
    }
}
