//! Layer-by-layer weight streaming: `--offload sequential`, diffusers' `enable_sequential_cpu_offload`.
//!
//! The weights stay in CPU RAM. While a [`StreamTo`] guard is alive on a thread, every layer of [`crate::nn`]
//! copies its weight and bias to the guard's device just for its own operation and lets the copy go right after,
//! so the GPU holds one layer's weights at a time (plus activations) instead of the model. It is the slowest
//! offload (every step re-sends the whole model) and the smallest: it is for GPUs far smaller than the model.
//!
//! Layers outside `nn` never see streamed weights, so model code that needs "the device this model runs on" asks
//! [`device_of`] rather than a weight's own device.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Tensor};

thread_local! {
    static TARGET: Cell<Option<Device>> = const { Cell::new(None) };
}

/// Bytes copied by streaming since the process started (tests check that every layer streamed).
static STREAMED: AtomicU64 = AtomicU64::new(0);

/// While alive, `nn` layers on this thread run on `device` with weights copied there per operation.
#[must_use = "streaming stops when the guard is dropped"]
pub struct StreamTo {
    previous: Option<Device>,
}

/// Start streaming to `device` on this thread (guards nest; dropping one restores what was before it).
pub fn stream_to(device: Device) -> StreamTo {
    let previous = TARGET.with(|t| t.replace(Some(device)));
    StreamTo { previous }
}

impl Drop for StreamTo {
    fn drop(&mut self) {
        TARGET.with(|t| t.set(self.previous));
    }
}

/// The device a model runs on: the streaming target when streaming, else where `weight` lives.
pub fn device_of(weight: &Tensor) -> Device {
    TARGET.with(|t| t.get()).unwrap_or_else(|| weight.device())
}

/// Total bytes streamed so far.
pub fn streamed_bytes() -> u64 {
    STREAMED.load(Ordering::Relaxed)
}

/// A weight ready for one operation: the layer's own tensor, or a copy on the streaming device.
pub enum Weight<'a> {
    Resident(&'a Tensor),
    Streamed(Tensor),
}

impl Deref for Weight<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            Weight::Resident(t) => t,
            Weight::Streamed(t) => t,
        }
    }
}

/// `t` for one operation. When streaming, always a fresh copy (even to the CPU), so the path a GPU takes is the
/// one CPU tests exercise and count; otherwise the tensor itself, at no cost.
pub fn weight(t: &Tensor) -> Weight<'_> {
    match TARGET.with(|c| c.get()) {
        None => Weight::Resident(t),
        Some(device) => {
            STREAMED.fetch_add((t.numel() * t.kind().elt_size_in_bytes()) as u64, Ordering::Relaxed);
            // `copy = true`: a real transfer even when the weight is already there; non-blocking from pinned memory
            // is not used because the copy is consumed at once.
            Weight::Streamed(t.to_device_(device, t.kind(), false, true))
        }
    }
}

/// [`weight`] for an optional tensor (biases).
pub fn weight_opt(t: Option<&Tensor>) -> Option<Weight<'_>> {
    t.map(weight)
}
