//! AdamW and gradient clipping, written out over plain tensors so that they match PyTorch step for step and their
//! state can be saved and resumed.
//!
//! Why not `tch::nn::AdamW`: LibTorch's C++ AdamW computes the same update as `torch.optim.AdamW`, but tch exposes
//! neither its moment buffers nor its step count, so a run could not be resumed exactly, and mixed precision (bf16
//! weights with float32 master copies) is impossible through it. The update here is the one of
//! `torch/optim/adam.py::_single_tensor_adam` with `decoupled_weight_decay=True` (the CPU default path), in the same
//! order of operations:
//!
//! ```text
//! p ← p · (1 − lr·wd)                       (decoupled weight decay, Loshchilov & Hutter 2019)
//! m ← lerp(m, g, 1 − β1)                    v ← v·β2 + (1 − β2)·g²
//! denom ← sqrt(v) / sqrt(1 − β2^t) + ε      (ε added after the bias correction of v, as torch does)
//! p ← p − lr / (1 − β1^t) · m / denom
//! ```

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// `torch.optim.AdamW` hyper-parameters (PyTorch's defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// One optimised tensor: the model's variable, its float32 master copy when the model runs in a reduced
/// precision, and the two moment buffers (always float32).
struct Slot {
    name: String,
    param: Tensor,
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named tensors; see the module docs for the exact update.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// `params`: (name, variable) pairs; names are used to save and restore the state.
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.beta1) || !(0.0..1.0).contains(&cfg.beta2) {
            bail!("AdamW betas must be in [0, 1), got ({}, {})", cfg.beta1, cfg.beta2);
        }
        let mut slots = Vec::with_capacity(params.len());
        for (name, param) in params {
            let master = if param.kind() == Kind::Float { None } else { Some(param.detach().to_kind(Kind::Float)) };
            let zeros = || Tensor::zeros(param.size(), (Kind::Float, param.device()));
            slots.push(Slot { name, exp_avg: zeros(), exp_avg_sq: zeros(), master, param });
        }
        Ok(Self { cfg, slots, step: 0 })
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters, in order (for gradient clipping and zeroing).
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.slots.iter().map(|s| &s.param)
    }

    /// One AdamW step at learning rate `lr`; parameters without a gradient are skipped (as torch does).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        for slot in &mut self.slots {
            let grad = slot.param.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.f_to_kind(Kind::Float).with_context(|| format!("gradient of `{}`", slot.name))?;
            let mut p = match &slot.master {
                Some(m) => m.shallow_clone(),
                None => slot.param.shallow_clone(),
            };
            if weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let _ = slot.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
            let _ = slot.exp_avg_sq.f_mul_scalar_(beta2)?;
            let _ = slot.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, &grad)?;
            let denom = slot.exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?.f_add_scalar(eps)?;
            let _ = p.f_addcdiv_(&slot.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
            if slot.master.is_some() {
                slot.param.f_copy_(&p)?;
            }
        }
        Ok(())
    }

    /// Drop every gradient (`optimizer.zero_grad(set_to_none=True)`).
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            let mut g = slot.param.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The float32 value of every parameter (the master copy where there is one), for saving checkpoints.
    pub fn full_precision_params(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.master.as_ref().unwrap_or(&s.param).detach().to_kind(Kind::Float)))
            .collect()
    }

    /// Moment buffers (and master weights) under `exp_avg.<name>`, `exp_avg_sq.<name>`, `master.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.shallow_clone()));
            if let Some(m) = &s.master {
                out.push((format!("master.{}", s.name), m.shallow_clone()));
            }
        }
        out
    }

    /// Restore what [`state_tensors`](Self::state_tensors) saved, after `step` optimizer steps.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for s in &mut self.slots {
            for (prefix, dst) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                let key = format!("{prefix}.{}", s.name);
                let src = tensors.get(&key).with_context(|| format!("training state lacks `{key}`"))?;
                if src.size() != dst.size() {
                    bail!("training state `{key}` has shape {:?}, the model needs {:?}", src.size(), dst.size());
                }
                dst.f_copy_(src)?;
            }
            if let Some(m) = &mut s.master {
                let key = format!("master.{}", s.name);
                let src = tensors.get(&key).with_context(|| format!("training state lacks `{key}`"))?;
                m.f_copy_(src)?;
                s.param.f_copy_(src)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` with the 2-norm: returns the total norm before clipping and
/// scales every gradient by `min(max_norm / (total + 1e-6), 1)`.
pub fn clip_grad_norm(params: &[Tensor], max_norm: Option<f64>) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms: Vec<Tensor> =
        grads.iter().map(|g| g.f_to_kind(Kind::Float)?.f_norm()).collect::<std::result::Result<_, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let total_f = total.double_value(&[]);
    if let Some(max_norm) = max_norm {
        let coef = total.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(max_norm)?.f_clamp_max(1.0)?;
        for mut g in grads {
            let c = coef.f_to_kind(g.kind())?;
            let _ = g.f_mul_(&c)?;
        }
    }
    Ok(total_f)
}
