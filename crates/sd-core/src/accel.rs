//! What the loaded LibTorch is and what the GPU holds, asked of the libraries themselves.
//!
//! tch wraps neither `at::show_config()` nor the caching allocator's statistics, and a version file next to the
//! library says what was installed, not what this process loaded (a `LIBTORCH` pointing elsewhere, a Python
//! torch). `shim/accel.cpp` exposes the few C++ calls needed through a C ABI; the CUDA driver's device
//! description (name, compute capability, memory) comes from `libcuda` through the same shim, so no CUDA header
//! or library is needed to build sd-rs on a CPU-only machine.

use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::Device;

extern "C" {
    fn sdrs_last_error(buf: *mut c_char, len: usize) -> usize;
    fn sdrs_show_config(buf: *mut c_char, len: usize) -> i64;
    fn sdrs_memory_stats(device: c_int, out: *mut i64, n: usize) -> c_int;
    fn sdrs_reset_peak_memory(device: c_int) -> c_int;
    fn sdrs_memory_info(device: c_int, free_bytes: *mut i64, total_bytes: *mut i64) -> c_int;
    fn sdrs_cuda_device(
        device: c_int,
        name: *mut c_char,
        name_len: usize,
        major: *mut c_int,
        minor: *mut c_int,
        multiprocessors: *mut c_int,
        total_bytes: *mut i64,
        driver_version: *mut c_int,
    ) -> c_int;
}

/// The shim's last error (any of its files, `onednn.cpp` too), first line only.
pub(crate) fn last_error() -> String {
    let mut buf = vec![0u8; 512];
    // SAFETY: the shim writes at most `len` bytes, NUL-terminated, into the buffer we own.
    unsafe { sdrs_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    let text = CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    // LibTorch appends a C++ backtrace after the first line; users get the sentence.
    text.lines().next().unwrap_or("").to_string()
}

/// How the LibTorch in this process was built, from its own `at::show_config()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibTorchBuild {
    /// `TORCH_VERSION` of the build settings, e.g. `2.13.0`.
    pub version: Option<String>,
    /// The CUDA toolkit the library was compiled for (`CUDA_VERSION`), present in CUDA-enabled builds.
    pub cuda_version: Option<String>,
    /// The cuDNN it was compiled for (`CUDNN_VERSION`).
    pub cudnn_version: Option<String>,
    /// The CPU kernels it dispatches to on this machine ("AVX512", "AVX2", ...).
    pub cpu_capability: Option<String>,
    /// Whether `libtorch_cuda.so` is loaded: PyPI's CPU library is compiled with CUDA support too, so only this
    /// tells a CUDA install (`cargo xtask setup --cuda`) from a CPU-only one.
    pub cuda_library_loaded: bool,
    /// The full text, for `sd doctor --json`.
    pub config: String,
}

impl LibTorchBuild {
    pub fn query() -> Result<Self> {
        let config = show_config()?;
        Ok(Self::parse(&config, loaded_library("libtorch_cuda.so").is_some()))
    }

    /// Read the fields out of `at::show_config()` text.
    pub fn parse(config: &str, cuda_library_loaded: bool) -> Self {
        let setting = |key: &str| {
            let settings = config.lines().find_map(|l| l.trim().strip_prefix("- Build settings:"))?;
            settings
                .split(", ")
                .find_map(|kv| kv.trim().strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(|v| v.trim().trim_end_matches(',').to_string())
                .filter(|v| !v.is_empty())
        };
        let cpu_capability =
            config.lines().find_map(|l| l.trim().strip_prefix("- CPU capability usage:")).map(|v| v.trim().to_string());
        Self {
            version: setting("TORCH_VERSION"),
            cuda_version: setting("CUDA_VERSION"),
            cudnn_version: setting("CUDNN_VERSION"),
            cpu_capability,
            cuda_library_loaded,
            config: config.to_string(),
        }
    }
}

fn show_config() -> Result<String> {
    let mut len = 16 << 10;
    for _ in 0..2 {
        let mut buf = vec![0u8; len];
        // SAFETY: as in `last_error`; the return value is the full length, which may exceed the buffer.
        let n = unsafe { sdrs_show_config(buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            bail!("LibTorch could not describe its build: {}", last_error());
        }
        let n = n as usize;
        if n < len {
            buf.truncate(n);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        len = n + 1;
    }
    bail!("LibTorch's build description kept growing while it was read")
}

/// The path of a shared library this process has mapped (e.g. `libtorch_cpu.so`), from `/proc/self/maps`.
pub fn loaded_library(file_name: &str) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| std::path::Path::new(p).file_name().is_some_and(|n| n == file_name))
        .map(std::path::PathBuf::from)
}

/// One CUDA GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_bytes: i64,
    /// The newest CUDA version the installed driver supports, e.g. 13000 for 13.0.
    pub driver_cuda_version: i32,
}

impl GpuInfo {
    /// bf16 tensor cores exist from Ampere (compute capability 8.0) on; older GPUs emulate bf16 slowly.
    pub fn native_bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }

    /// Every CUDA device LibTorch sees (empty without a driver or GPU).
    pub fn all() -> Result<Vec<GpuInfo>> {
        let n = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
        (0..n.max(0) as usize).map(Self::query).collect()
    }

    pub fn query(index: usize) -> Result<GpuInfo> {
        let mut name = vec![0u8; 256];
        let (mut major, mut minor, mut sms, mut total, mut driver) = (0, 0, 0, 0i64, 0);
        let device = c_int::try_from(index)?;
        // SAFETY: every out-pointer refers to a live local; the name buffer is ours and its length is passed.
        let rc = unsafe {
            sdrs_cuda_device(
                device,
                name.as_mut_ptr().cast(),
                name.len(),
                &mut major,
                &mut minor,
                &mut sms,
                &mut total,
                &mut driver,
            )
        };
        if rc != 0 {
            bail!("cannot describe CUDA device {index}: {}", last_error());
        }
        let name = CStr::from_bytes_until_nul(&name).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(GpuInfo {
            index,
            name,
            compute_capability: (major, minor),
            multiprocessors: sms,
            total_bytes: total,
            driver_cuda_version: driver,
        })
    }
}

/// The accelerator allocator's counters for one device: bytes as (current, peak) pairs, and its event counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live tensors; the peak is what `torch.cuda.max_memory_allocated` reports.
    pub allocated: (i64, i64),
    /// Bytes the caching allocator holds from the driver (`max_memory_reserved`): what other processes cannot use
    /// and what `nvidia-smi` shows, less the CUDA context.
    pub reserved: (i64, i64),
    /// Bytes of blocks in use, including the unused tails of split blocks.
    pub active: (i64, i64),
    /// Bytes of split blocks that are free but cannot go back to the driver (fragmentation).
    pub inactive_split: (i64, i64),
    /// Allocations that failed once and succeeded after the cache was flushed (a sign of memory pressure).
    pub alloc_retries: i64,
    /// Allocations that failed for good.
    pub ooms: i64,
}

fn accelerator_index(device: Device) -> Option<c_int> {
    match device {
        Device::Cuda(i) => c_int::try_from(i).ok(),
        Device::Mps => Some(0),
        _ => None,
    }
}

impl MemoryStats {
    /// The statistics of `device` since the process started or the last [`MemoryStats::reset_peak`]; `None` on
    /// the CPU (whose peak is the process's RSS) or when the allocator cannot tell.
    pub fn of(device: Device) -> Option<MemoryStats> {
        let index = accelerator_index(device)?;
        let mut v = [0i64; 10];
        // SAFETY: the shim writes exactly 10 counters into the array we own and pass with its length.
        let rc = unsafe { sdrs_memory_stats(index, v.as_mut_ptr(), v.len()) };
        (rc == 0).then_some(MemoryStats {
            allocated: (v[0], v[1]),
            reserved: (v[2], v[3]),
            active: (v[4], v[5]),
            inactive_split: (v[6], v[7]),
            alloc_retries: v[8],
            ooms: v[9],
        })
    }

    /// Start a new peak measurement on `device` (no-op on the CPU).
    pub fn reset_peak(device: Device) {
        if let Some(index) = accelerator_index(device) {
            // SAFETY: plain value argument; failure (no accelerator) is reported by the return value and ignored
            // because the next `of` then returns None.
            unsafe { sdrs_reset_peak_memory(index) };
        }
    }
}

/// Free and total bytes of an accelerator as its driver reports them (`None` on the CPU).
pub fn device_memory(device: Device) -> Option<(i64, i64)> {
    let index = accelerator_index(device)?;
    let (mut free, mut total) = (0i64, 0i64);
    // SAFETY: the out-pointers refer to live locals.
    let rc = unsafe { sdrs_memory_info(index, &mut free, &mut total) };
    (rc == 0).then_some((free, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_library_reports_its_own_version() {
        let build = LibTorchBuild::query().expect("show_config");
        assert_eq!(build.version.as_deref(), Some("2.13.0"), "{}", build.config);
        assert!(build.config.contains("PyTorch built with"));
        assert!(loaded_library("libtorch_cpu.so").is_some());
    }

    #[test]
    fn build_settings_are_parsed_field_by_field() {
        let text = "PyTorch built with:\n  - GCC 13.3\n  - CPU capability usage: AVX512\n  - Build settings: \
                    BLAS_INFO=mkl, CUDA_VERSION=13.0, CUDNN_VERSION=9.20.0, CXX_FLAGS= -O2 -fPIC, \
                    TORCH_VERSION=2.13.0, USE_CUDA=1, \n";
        let b = LibTorchBuild::parse(text, true);
        assert_eq!(b.version.as_deref(), Some("2.13.0"));
        assert_eq!(b.cuda_version.as_deref(), Some("13.0"));
        assert_eq!(b.cudnn_version.as_deref(), Some("9.20.0"));
        assert_eq!(b.cpu_capability.as_deref(), Some("AVX512"));
        assert!(b.cuda_library_loaded);
        let cpu_only = LibTorchBuild::parse("PyTorch built with:\n  - Build settings: TORCH_VERSION=2.4.1, \n", false);
        assert_eq!(cpu_only.version.as_deref(), Some("2.4.1"));
        assert_eq!(cpu_only.cuda_version, None);
    }

    #[test]
    fn the_cpu_has_no_allocator_statistics_and_no_gpu_is_invented() {
        assert_eq!(MemoryStats::of(Device::Cpu), None);
        MemoryStats::reset_peak(Device::Cpu);
        assert_eq!(device_memory(Device::Cpu), None);
        if !tch::Cuda::is_available() {
            assert!(GpuInfo::all().expect("no devices is not an error").is_empty());
            // Asking for a device that is not there is an error naming it, not a crash.
            let err = GpuInfo::query(0).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("CUDA device 0"), "{err}");
        }
    }
}
