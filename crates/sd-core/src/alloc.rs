//! Keep freed memory in the process instead of handing it back to the kernel after every layer.
//!
//! A diffusion step allocates and frees the same activation sizes (megabytes to tens of megabytes) hundreds of
//! times. With glibc's defaults many of those blocks are `mmap`ed and unmapped, or trimmed off the heap, on every
//! use, so the kernel has to fault in and zero fresh pages each time: measured 7 % of a bf16 SD1.5 UNet step in
//! `clear_page` and page-fault handling, and the step itself 2.46 s instead of 2.74–2.83 s at 512 px once the
//! blocks are reused (`benches/examples/unet_step.rs`, 2-core Zen 5). Peak RSS is unchanged in kind: the memory
//! kept is memory the run has already needed.
//!
//! Blocks above 32 MiB (glibc's largest mmap threshold) are always `mmap`ed, whatever the threshold: a 512 px VAE
//! decode's activations are 64–128 MiB each, and faulting them in took 14 % of the decode. [`HeapOnly`] sends
//! every allocation to the heap while a decode or encode runs, where freed blocks are reused.

/// Raise glibc's mmap threshold to its maximum (32 MiB) and stop trimming the heap below 1 GiB of free space.
/// Idempotent; a no-op on other C libraries and platforms. Returns whether the settings were applied.
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::OnceLock;
        static APPLIED: OnceLock<bool> = OnceLock::new();
        *APPLIED.get_or_init(|| {
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes allocator tuning parameters; it is called with glibc's documented
            // parameter numbers and in-range values, and returns 0 (unchanged) on failure.
            unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 }
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hand the heap's free pages back to the kernel (glibc's `malloc_trim`), after a whole model was dropped: with
/// [`reuse_freed_memory`]'s settings, weights below 32 MiB live on the heap and freeing them would otherwise leave
/// the process's resident size where it was. Returns whether any memory was released; a no-op elsewhere.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap_only {
    use std::sync::Mutex;

    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_MMAP_MAX: i32 = -4;
    /// glibc's default `M_MMAP_MAX`.
    const DEFAULT_MMAP_MAX: i32 = 65536;

    /// How many [`super::HeapOnly`] guards are alive (a server may decode on several threads).
    static ACTIVE: Mutex<usize> = Mutex::new(0);

    pub fn enter() {
        let mut n = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            // SAFETY: mallopt only changes an allocator tuning parameter (documented number, in-range value).
            unsafe { mallopt(M_MMAP_MAX, 0) };
        }
        *n += 1;
    }

    pub fn leave() {
        let mut n = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            // SAFETY: as above; restores glibc's default.
            unsafe { mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) };
            // The decode's blocks go back to the kernel as an unmapped block would have: a resident server stays
            // at its idle size between jobs, and the next decode faults its working set in once, not per layer.
            super::release_free_memory();
        }
    }
}

/// While alive, glibc serves even the largest blocks from the heap instead of fresh `mmap`s, so a layer's freed
/// 64–128 MiB activation is reused by the next layer rather than unmapped and faulted in again (a 512 px SD1.5
/// decode in bf16 on a 2-core EPYC: 6.4–6.9 → 6.0–6.3 s). Scoped to VAE decodes and encodes: made process-wide
/// (glibc's `mmap_max=0` tunable), a whole `sd generate` peaked 4 % higher. When the last guard ends, the heap's
/// free pages are handed back ([`release_free_memory`]). Nests; a no-op on other C libraries and platforms.
#[must_use = "the heap-only setting ends when the guard is dropped"]
pub struct HeapOnly(());

impl HeapOnly {
    pub fn new() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        heap_only::enter();
        Self(())
    }
}

impl Default for HeapOnly {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HeapOnly {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        heap_only::leave();
    }
}
