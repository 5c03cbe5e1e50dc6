//! Which tensors a model was built from, so they can be moved between devices later without the model's code
//! knowing: `--offload model` keeps every component in CPU RAM and gives it GPU memory only while it runs.
//!
//! A model is a tree of plain structs; tch has no `Module::parameters()`. Instead, every tensor a
//! [`super::VarBuilder`] hands out while [`capture`] runs is remembered (a shallow handle: same storage, same
//! `TensorImpl`), and [`Captured::replace_data`] later swaps each one's storage in place with `set_data`, which every
//! struct holding that tensor sees. This relies on model code keeping the tensors it was given, never tensors
//! derived from them at load time (a transposed or pre-packed copy would stay behind): the nn layers of
//! `sd-models` satisfy that, and the offload tests check it on every component.

use anyhow::{Context, Result};
use std::cell::RefCell;
use tch::Tensor;

thread_local! {
    /// One list per active [`capture`] (they nest: a pipeline load captures each component separately).
    static ACTIVE: RefCell<Vec<Vec<Tensor>>> = const { RefCell::new(Vec::new()) };
}

/// Remember `t` in the innermost active capture, if any (called by the builder for every tensor it returns).
pub(crate) fn record(t: &Tensor) {
    ACTIVE.with(|a| {
        if let Some(list) = a.borrow_mut().last_mut() {
            list.push(t.shallow_clone());
        }
    });
}

/// Drop `t` from the innermost active capture: for a layer that replaced a tensor it was handed with a derived
/// copy it keeps instead (weights packed for oneDNN, [`crate::onednn`]). Without this the capture would keep the
/// original alive beside the copy: a second copy of the model's weights. Matched by storage address, newest first.
pub fn forget(t: &Tensor) {
    let ptr = t.data_ptr();
    ACTIVE.with(|a| {
        if let Some(list) = a.borrow_mut().last_mut() {
            if let Some(i) = list.iter().rposition(|c| c.data_ptr() == ptr && c.size() == t.size()) {
                drop(list.remove(i));
            }
        }
    });
}

/// Ends a capture even when the closure returns early or panics, so a later load is not captured by mistake.
struct Scope;

impl Drop for Scope {
    fn drop(&mut self) {
        ACTIVE.with(|a| {
            a.borrow_mut().pop();
        });
    }
}

/// Run `build` and return what it built with every tensor a `VarBuilder` handed out meanwhile (on this thread).
pub fn capture<T>(build: impl FnOnce() -> Result<T>) -> Result<(T, Captured)> {
    ACTIVE.with(|a| a.borrow_mut().push(Vec::new()));
    let scope = Scope;
    let built = build();
    let tensors = ACTIVE.with(|a| a.borrow_mut().last_mut().map(std::mem::take).unwrap_or_default());
    drop(scope);
    Ok((built?, Captured { tensors }))
}

/// The tensors of one built model, movable in place.
#[derive(Default)]
pub struct Captured {
    tensors: Vec<Tensor>,
}

impl Captured {
    /// Add another model's tensors (a component group such as "UNet and its ControlNets").
    pub fn extend(&mut self, other: Captured) {
        self.tensors.extend(other.tensors);
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The captured tensors, in the order the model asked for them.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Give every tensor the storage `data(i, tensor)` returns, in place (normally the same values on another
    /// device; any shape is accepted, so a caller may also leave an empty stand-in).
    pub fn replace_data(&mut self, mut data: impl FnMut(usize, &Tensor) -> Result<Tensor>) -> Result<()> {
        for (i, t) in self.tensors.iter_mut().enumerate() {
            let new = data(i, t)?;
            t.f_set_data(&new).with_context(|| format!("cannot swap the storage of a {:?} weight", t.size()))?;
        }
        Ok(())
    }
}
