//! A bf16 output buffer's data pointer shared by parallel workers (sd-rs's own CPU kernels: fused attention,
//! Winograd transforms), each of which writes only its own disjoint elements.

/// The pointer; `Send` and `Sync` so rayon closures can capture it. Creating one is safe, writing through
/// [`SharedOut::get`] is `unsafe` and the caller's promise: the buffer outlives the parallel region and no two
/// workers touch the same element.
#[derive(Clone, Copy)]
pub struct SharedOut(*mut u16);

impl SharedOut {
    pub fn new(ptr: *mut u16) -> Self {
        Self(ptr)
    }

    /// A method (not field access) so closures capture the whole `Sync` wrapper rather than the raw field.
    pub fn get(self) -> *mut u16 {
        self.0
    }
}

// SAFETY: the wrapper only carries the address; every write through it is an `unsafe` block whose caller guarantees
// a live buffer and disjoint elements per worker (see the type's docs).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}
