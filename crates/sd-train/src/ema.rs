//! Exponential moving average of the UNet weights (diffusers `training_utils.EMAModel` without warmup):
//! after optimizer step `n` (1-based), `decay_n = min(decay, (1 + k) / (10 + k))` with `k = n - 1` (and 0 for the
//! first step, which therefore copies the weights), and
//! `ema ← ema − (1 − decay_n)(ema − θ)`. The short ramp keeps early, still-random weights from dominating.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

pub struct Ema {
    decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Start from the current float32 weights.
    pub fn new(params: Vec<(String, Tensor)>, decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            bail!("--ema-decay must be in [0, 1], got {decay}");
        }
        let shadow = params.into_iter().map(|(n, t)| (n, t.detach().to_kind(Kind::Float).copy())).collect();
        Ok(Self { decay, shadow })
    }

    /// The decay used after optimizer step `step` (1-based).
    pub fn decay_at(&self, step: u64) -> f64 {
        let k = step.saturating_sub(1) as f64;
        if k == 0.0 {
            return 0.0;
        }
        ((1.0 + k) / (10.0 + k)).min(self.decay)
    }

    /// Fold in the current weights (`params` in the same order as at construction).
    pub fn update(&mut self, params: &[(String, Tensor)], step: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let one_minus = 1.0 - self.decay_at(step);
        for ((name, shadow), (pname, p)) in self.shadow.iter_mut().zip(params) {
            if name != pname {
                bail!("EMA parameter order changed: `{name}` vs `{pname}`");
            }
            let diff = shadow.f_sub(&p.f_to_kind(Kind::Float)?)?;
            let _ = shadow.f_sub_(&diff.f_mul_scalar(one_minus)?)?;
        }
        Ok(())
    }

    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Restore shadows saved under `ema.<name>`.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (name, shadow) in &mut self.shadow {
            let key = format!("ema.{name}");
            match tensors.get(&key) {
                Some(t) if t.size() == shadow.size() => {
                    shadow.f_copy_(t)?;
                }
                Some(t) => bail!("training state `{key}` has shape {:?}, expected {:?}", t.size(), shadow.size()),
                None => bail!("training state lacks `{key}` (was the run started without --ema?)"),
            }
        }
        Ok(())
    }
}
