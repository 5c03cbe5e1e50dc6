//! Parallel loops of sd-rs's own CPU kernels on LibTorch's intra-op thread pool (C++ shim `shim/parallel.cpp`).
//!
//! Why not rayon: LibTorch's OpenMP workers spin-wait between operations, and a kernel run on a second pool in that
//! gap competed with the spinning for the same cores (12 % of a VAE decode's samples were OpenMP spin loops while the
//! Winograd transforms ran on rayon). The same threads, already awake, now run the loop.

use anyhow::{bail, Result};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

extern "C" {
    fn sdrs_parallel_for(n: i64, grain: i64, body: extern "C" fn(*mut c_void, i64, i64), ctx: *mut c_void) -> i32;
}

struct Context<'a, F> {
    body: &'a F,
    panicked: AtomicBool,
}

extern "C" fn trampoline<F: Fn(usize, usize) + Sync>(ctx: *mut c_void, begin: i64, end: i64) {
    // SAFETY: `ctx` is the `Context<F>` that `parallel_for` passed in and keeps alive until the loop returns.
    let ctx = unsafe { &*(ctx as *const Context<'_, F>) };
    // A panic must not unwind into C++: it is caught and reported once the loop is done.
    if catch_unwind(AssertUnwindSafe(|| (ctx.body)(begin as usize, end as usize))).is_err() {
        ctx.panicked.store(true, Ordering::Relaxed);
    }
}

/// Runs `body(begin, end)` over disjoint ranges covering `0..n`, on LibTorch's intra-op threads (`--threads`),
/// each range at least `grain` long where `n` allows.
pub fn parallel_for<F: Fn(usize, usize) + Sync>(n: usize, grain: usize, body: F) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let ctx = Context { body: &body, panicked: AtomicBool::new(false) };
    // SAFETY: the callback only reads `ctx`, which outlives the call (`at::parallel_for` returns after every range).
    let rc = unsafe {
        sdrs_parallel_for(n as i64, grain.max(1) as i64, trampoline::<F>, &ctx as *const Context<'_, F> as *mut c_void)
    };
    if rc != 0 {
        bail!("parallel loop: {}", crate::accel::last_error());
    }
    if ctx.panicked.load(Ordering::Relaxed) {
        bail!("parallel loop: a worker panicked");
    }
    Ok(())
}
