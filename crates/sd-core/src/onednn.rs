//! bf16 convolutions and linear layers on the CPU with weights packed once, through LibTorch's oneDNN operators
//! (C++ shim `shim/onednn.cpp`).
//!
//! `Tensor::conv2d` and `Tensor::linear` give oneDNN a plain weight, which it copies into its blocked layout on
//! every call: for SD1.5's UNet that is 1.7 GB of weights rewritten per step, and the small-image levels (8×8,
//! 16×16 latents), where a convolution does little work per weight byte, pay most. Packing once at load time
//! removes the copy. The same operators can also apply an activation as they write the output, saving a pass
//! over the activations. (They can add a residual too, but measured slower than a separate add: not offered.)
//!
//! A packed weight is an opaque oneDNN tensor: it has the logical shape and dtype of the original but no strides,
//! so it can only be used through the functions here. Packing is for inference: the packed tensor has no
//! gradient. [`supported`] says whether the running LibTorch and CPU offer these kernels in bf16.

use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn sdrs_onednn_pack_conv_weight(
        weight: *const C_tensor,
        padding: i64,
        stride: i64,
        groups: i64,
        input_size: *const i64,
        out: *mut *mut C_tensor,
    ) -> c_int;
    fn sdrs_onednn_conv(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        padding: i64,
        stride: i64,
        groups: i64,
        unary: *const c_char,
        algorithm: *const c_char,
        out: *mut *mut C_tensor,
    ) -> c_int;
    fn sdrs_onednn_pack_linear_weight(weight: *const C_tensor, rows: i64, out: *mut *mut C_tensor) -> c_int;
    fn sdrs_onednn_linear(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        unary: *const c_char,
        algorithm: *const c_char,
        out: *mut *mut C_tensor,
    ) -> c_int;
}

/// An activation oneDNN applies to a kernel's output before writing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    None,
    /// SiLU (oneDNN's "swish" with β = 1).
    Silu,
    /// Exact (erf) GELU, PyTorch's `gelu(approximate="none")`.
    Gelu,
}

impl Unary {
    /// PyTorch's (attr, algorithm) names for the activation.
    fn names(self) -> (&'static CStr, Option<&'static CStr>) {
        match self {
            Self::None => (c"none", None),
            Self::Silu => (c"swish", None),
            Self::Gelu => (c"gelu", Some(c"none")),
        }
    }
}

/// Whether packed bf16 kernels are used here: a CPU with native bf16 dot products (AVX-512 BF16, which every AMX
/// CPU also has), a LibTorch built with oneDNN, and `SD_RS_PACKED_WEIGHTS` not set to `0` (the switch the
/// benchmarks use to measure the plain path side by side). Elsewhere oneDNN emulates bf16 and the plain path is
/// kept.
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::env::var("SD_RS_PACKED_WEIGHTS").map_or(true, |v| v != "0")
            && crate::device::CpuFeatures::detect().native_bf16()
            && tch::utils::has_mkldnn()
    })
}

fn ptr(t: &Tensor) -> *const C_tensor {
    t.as_ptr()
}

fn opt_ptr(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}

fn opt_str(s: Option<&CStr>) -> *const c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// Turns the shim's (status, out pointer) into a tensor or the C++ error's first line.
fn finish(rc: c_int, out: *mut C_tensor, what: &str) -> Result<Tensor> {
    if rc != 0 || out.is_null() {
        bail!("oneDNN {what}: {}", crate::accel::last_error());
    }
    // SAFETY: on success the shim returns a heap-allocated `at::Tensor` that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out) })
}

fn check_input(x: &Tensor, what: &str) -> Result<()> {
    if x.device() != Device::Cpu || x.kind() != Kind::BFloat16 {
        bail!("oneDNN {what}: expected a bf16 CPU tensor, got {:?} on {:?}", x.kind(), x.device());
    }
    Ok(())
}

/// Packs a convolution weight (O, I, k, k; bf16, CPU) for inputs of `input_size` (N, C, H, W), or for oneDNN's
/// default guess when `None`. Any input size still works; oneDNN re-lays the weight out per call where its
/// preferred layout for that size differs.
pub fn pack_conv_weight(weight: &Tensor, padding: i64, stride: i64, input_size: Option<[i64; 4]>) -> Result<Tensor> {
    pack_conv(weight, padding, stride, 1, input_size, "convolution weight packing")
}

/// Packs a 1×1 convolution weight of `groups` groups (`[groups · O, C, 1, 1]`, bf16, CPU) for inputs of `input_size`
/// (`[N, groups · C, H, W]`): `groups` independent matrix products in one kernel (what `winograd` runs its 16
/// products as).
pub fn pack_grouped_conv_weight(weight: &Tensor, groups: i64, input_size: [i64; 4]) -> Result<Tensor> {
    pack_conv(weight, 0, 1, groups, Some(input_size), "grouped convolution weight packing")
}

fn pack_conv(
    weight: &Tensor,
    padding: i64,
    stride: i64,
    groups: i64,
    input_size: Option<[i64; 4]>,
    what: &str,
) -> Result<Tensor> {
    check_input(weight, what)?;
    let size = input_size.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    let mut out = std::ptr::null_mut();
    // SAFETY: `weight` outlives the call; `size` is null or points at 4 integers.
    let rc = unsafe { sdrs_onednn_pack_conv_weight(ptr(weight), padding, stride, groups, size, &mut out) };
    finish(rc, out, what)
}

/// `conv2d(x, W, groups)` for a packed 1×1 grouped weight (no bias, no padding).
pub fn conv_grouped(x: &Tensor, packed: &Tensor, groups: i64) -> Result<Tensor> {
    run_conv(x, packed, None, 0, 1, groups, Unary::None, "grouped convolution")
}

/// `unary(conv2d(x, W, bias))` (groups 1, dilation 1) with a packed `W`.
pub fn conv(
    x: &Tensor,
    packed: &Tensor,
    bias: Option<&Tensor>,
    padding: i64,
    stride: i64,
    unary: Unary,
) -> Result<Tensor> {
    run_conv(x, packed, bias, padding, stride, 1, unary, "convolution")
}

#[allow(clippy::too_many_arguments)]
fn run_conv(
    x: &Tensor,
    packed: &Tensor,
    bias: Option<&Tensor>,
    padding: i64,
    stride: i64,
    groups: i64,
    unary: Unary,
    what: &str,
) -> Result<Tensor> {
    check_input(x, what)?;
    let (attr, algorithm) = unary.names();
    let mut out = std::ptr::null_mut();
    // SAFETY: every pointer is a live tensor (or null for no bias) or a static C string for the call's duration.
    let rc = unsafe {
        sdrs_onednn_conv(
            ptr(x),
            ptr(packed),
            opt_ptr(bias),
            padding,
            stride,
            groups,
            attr.as_ptr(),
            opt_str(algorithm),
            &mut out,
        )
    };
    finish(rc, out, what)
}

/// Packs a linear weight (O, I; bf16, CPU) for inputs of `rows` rows (leading dimensions flattened), or for
/// oneDNN's default guess when `None`.
pub fn pack_linear_weight(weight: &Tensor, rows: Option<i64>) -> Result<Tensor> {
    check_input(weight, "linear weight packing")?;
    let mut out = std::ptr::null_mut();
    // SAFETY: `weight` outlives the call.
    let rc = unsafe { sdrs_onednn_pack_linear_weight(ptr(weight), rows.unwrap_or(0), &mut out) };
    finish(rc, out, "linear weight packing")
}

/// `unary(x·Wᵀ + bias)` with a packed `W`.
pub fn linear(x: &Tensor, packed: &Tensor, bias: Option<&Tensor>, unary: Unary) -> Result<Tensor> {
    check_input(x, "linear")?;
    let (attr, algorithm) = unary.names();
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `conv`.
    let rc =
        unsafe { sdrs_onednn_linear(ptr(x), ptr(packed), opt_ptr(bias), attr.as_ptr(), opt_str(algorithm), &mut out) };
    finish(rc, out, "linear")
}
