//! Learning-rate schedules as diffusers' `get_scheduler` builds them (`optimization.py`), i.e. `LambdaLR` factors
//! applied to the base rate. The factor for optimizer step `s` (0-based) is evaluated *before* that step, so with a
//! warmup the very first update uses a rate of 0, exactly as in diffusers' training scripts.

use anyhow::{bail, Result};
use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Linear warmup, then constant (`constant_with_warmup`; plain `constant` when warmup is 0).
    Constant,
    /// Linear warmup, then half a cosine down to 0 at the last step (`cosine`, `num_cycles = 0.5`).
    Cosine,
}

impl std::str::FromStr for LrSchedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" | "constant_with_warmup" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            other => bail!("unknown learning-rate schedule `{other}`: expected constant or cosine"),
        }
    }
}

/// The multiplier of the base learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_factor(schedule: LrSchedule, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    match schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Cosine => {
            let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            (0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos())).max(0.0)
        }
    }
}
