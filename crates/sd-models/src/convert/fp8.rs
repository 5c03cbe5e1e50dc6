//! float8 single files as ComfyUI users have them (`sd3.5_large_fp8_scaled.safetensors`,
//! `t5xxl_fp8_e4m3fn.safetensors`, `t5xxl_fp8_e4m3fn_scaled.safetensors`, fp8 SDXL checkpoints).
//!
//! Three layouts exist:
//! - **plain**: weights stored as `F8_E4M3` / `F8_E5M2` with nothing else. They pass through [`super::source`]
//!   untouched (every float8 value is exact in bf16 and f32, so widening them is lossless) and a conversion keeps
//!   them as float8 unless `--dtype` asks otherwise.
//! - **legacy scaled** (ComfyUI's `scaled_fp8`): a marker tensor `<prefix>scaled_fp8`, and for each quantized
//!   layer `X.weight` (float8) with a per-tensor `X.scale_weight` and, sometimes, `X.scale_input` (an activation
//!   scale for float8 matmuls).
//! - **per-layer** (ComfyUI's mixed-precision format): `X.comfy_quant`, a uint8 tensor holding JSON such as
//!   `{"format": "float8_e4m3fn"}`, with `X.weight_scale` and sometimes `X.input_scale`.
//!
//! In both scaled layouts the real weight is `X.weight` × scale. [`Dequantize`] presents the file as if it held
//! those products: the scale, marker and activation-scale tensors disappear from `names()`, and `load("X.weight")`
//! returns the product computed in f32. Its `kind()` is bf16, the dtype the product is written in unless
//! `--dtype` says otherwise (an f32 copy of an 8 B transformer would not fit a 24 GB machine). sd-rs never computes
//! in float8 (CPUs have no float8 matmul), so a scaled layer costs what a bf16 one costs once converted.
//! Other quantization formats (`nvfp4`, `int8_*`) are refused by name.

use super::source::TensorSource;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use tch::{Kind, Tensor};

/// Legacy marker key (after the model prefix).
const LEGACY_MARKER: &str = "scaled_fp8";
/// Longest `comfy_quant` JSON read: the real ones are under 100 bytes.
const MAX_QUANT_CONFIG_BYTES: i64 = 4096;

/// A [`TensorSource`] whose scaled float8 weights read as their dequantized values.
pub struct Dequantize {
    inner: Box<dyn TensorSource>,
    /// Weight name → the name of its per-tensor scale.
    scales: BTreeMap<String, String>,
    /// Names that are bookkeeping of the quantization, not weights.
    hidden: BTreeSet<String>,
}

/// Whether `name` is the legacy layout's marker (bare or after a model prefix).
fn is_legacy_marker(name: &str) -> bool {
    name.strip_suffix(LEGACY_MARKER).is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('.'))
}

/// Wrap `src` when it holds scaled float8 weights; hand it back unchanged otherwise.
pub fn wrap(src: Box<dyn TensorSource>) -> Result<Box<dyn TensorSource>> {
    let names = src.names();
    let legacy = names.iter().any(|n| is_legacy_marker(n));
    let per_layer = names.iter().any(|n| n.ends_with(".comfy_quant"));
    if !legacy && !per_layer {
        return Ok(src);
    }
    let all: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut scales = BTreeMap::new();
    let mut hidden = BTreeSet::new();
    for n in &names {
        if is_legacy_marker(n) {
            hidden.insert(n.clone());
        } else if let Some(layer) = n.strip_suffix(".scale_weight").filter(|_| legacy) {
            scales.insert(format!("{layer}.weight"), n.clone());
            hidden.insert(n.clone());
        } else if n.ends_with(".scale_input") && legacy {
            hidden.insert(n.clone());
        } else if let Some(layer) = n.strip_suffix(".comfy_quant") {
            let format = quant_format(src.as_ref(), n)?;
            if format != "float8_e4m3fn" && format != "float8_e5m2" {
                bail!(
                    "layer `{layer}` of {} is quantized as `{format}`, which sd-rs does not read (supported: \
                     float8_e4m3fn and float8_e5m2 with a per-tensor scale); convert it to bf16 with the tool that \
                     made it",
                    src.describe()
                );
            }
            let scale = format!("{layer}.weight_scale");
            if !all.contains(scale.as_str()) {
                bail!("layer `{layer}` of {} is marked float8 but has no `{scale}`", src.describe());
            }
            scales.insert(format!("{layer}.weight"), scale.clone());
            hidden.insert(n.clone());
            hidden.insert(scale);
            hidden.insert(format!("{layer}.input_scale"));
        }
    }
    for (weight, scale) in &scales {
        if !all.contains(weight.as_str()) {
            bail!("{} has the scale `{scale}` but no weight `{weight}` for it to scale", src.describe());
        }
        let shape = src.shape(scale).unwrap_or_default();
        if shape.iter().product::<i64>() != 1 {
            bail!(
                "`{scale}` in {} has shape {shape:?}; a per-tensor scale (one value) was expected — per-channel or \
                 block scales are not supported",
                src.describe()
            );
        }
        if !src.kind(weight).is_some_and(sd_core::weights::is_float_kind) {
            bail!("`{weight}` in {} has a scale but is not stored as floating point", src.describe());
        }
    }
    Ok(Box::new(Dequantize { inner: src, scales, hidden }))
}

/// The `format` field of a `comfy_quant` tensor (uint8 bytes of a JSON object).
fn quant_format(src: &dyn TensorSource, name: &str) -> Result<String> {
    let shape = src.shape(name).unwrap_or_default();
    let len: i64 = shape.iter().product();
    if shape.len() != 1 || !(1..=MAX_QUANT_CONFIG_BYTES).contains(&len) || src.kind(name) != Some(Kind::Uint8) {
        bail!(
            "`{name}` in {} should be a uint8 vector of at most {MAX_QUANT_CONFIG_BYTES} bytes of JSON, found {:?} \
             of shape {shape:?}",
            src.describe(),
            src.kind(name)
        );
    }
    let t = src.load(name)?;
    let mut bytes = vec![0u8; len as usize];
    t.f_copy_data_u8(&mut bytes, len as usize)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("`{name}` in {} is not JSON", src.describe()))?;
    v.get("format")
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("`{name}` in {} names no quantization `format`", src.describe()))
}

impl TensorSource for Dequantize {
    fn names(&self) -> Vec<String> {
        self.inner.names().into_iter().filter(|n| !self.hidden.contains(n)).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        if self.hidden.contains(name) {
            return None;
        }
        self.inner.shape(name)
    }
    fn kind(&self, name: &str) -> Option<Kind> {
        if self.hidden.contains(name) {
            return None;
        }
        if self.scales.contains_key(name) {
            return Some(Kind::BFloat16);
        }
        self.inner.kind(name)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        if self.hidden.contains(name) {
            bail!("`{name}` in {} is a quantization scale, not a weight", self.describe());
        }
        let Some(scale) = self.scales.get(name) else {
            return self.inner.load(name);
        };
        let w = self.inner.load(name)?.f_to_kind(Kind::Float)?;
        let s = self.inner.load(scale)?.f_to_kind(Kind::Float)?.f_reshape([])?;
        w.f_mul(&s).with_context(|| format!("cannot dequantize `{name}` in {}", self.describe()))
    }
    fn global_step(&self) -> Option<i64> {
        self.inner.global_step()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
