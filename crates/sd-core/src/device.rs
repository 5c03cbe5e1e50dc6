//! Where tensors live and in which precision they are computed.
//!
//! Users write `--device cpu|cuda|cuda:1|mps|auto` and `--dtype f32|f16|bf16|auto`. `auto` on CPU picks bf16 only
//! when the processor computes it natively (avx512_bf16 or AMX): elsewhere bf16 is emulated and slower than f32.
//! On CUDA `auto` is f16, as diffusers users run it (VAEs that overflow in f16 decode in f32, see the loader),
//! and bf16 for the SD3 family on GPUs with bf16 tensor cores ([`auto_dtype_for_bf16_family`]).
//! f16 on CPU is refused unless forced, because LibTorch has no fast CPU f16 kernels (measured ~300x slower than
//! bf16 on this project's reference machine).

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// A device request as the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDevice {
    Auto,
    Cpu,
    Cuda(usize),
    Mps,
}

impl FromStr for ComputeDevice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "cuda" | "gpu" => Self::Cuda(0),
            "mps" => Self::Mps,
            _ => match s.strip_prefix("cuda:") {
                Some(n) => match n.parse() {
                    Ok(i) => Self::Cuda(i),
                    Err(_) => bail!("invalid device `{s}`: the CUDA index after `cuda:` must be a number"),
                },
                None => bail!("invalid device `{s}`: expected cpu, cuda, cuda:N, mps or auto"),
            },
        })
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Mps => write!(f, "mps"),
        }
    }
}

impl ComputeDevice {
    /// Resolve to a concrete LibTorch device; an unavailable accelerator is an error, not a silent CPU fallback.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto => Ok(if tch::Cuda::is_available() {
                enable_cudnn_autotuning();
                Device::Cuda(0)
            } else if tch::utils::has_mps() {
                Device::Mps
            } else {
                Device::Cpu
            }),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if n == 0 {
                    bail!("--device cuda:{i} requested but this LibTorch sees no CUDA device (CPU-only build or no driver); run `sd doctor`")
                }
                if i >= n {
                    bail!("--device cuda:{i} requested but only {n} CUDA device(s) exist")
                }
                enable_cudnn_autotuning();
                Ok(Device::Cuda(i))
            }
            Self::Mps => {
                if !tch::utils::has_mps() {
                    bail!("--device mps requested but this LibTorch has no MPS support")
                }
                Ok(Device::Mps)
            }
        }
    }
}

/// cuDNN benchmark mode: each convolution shape is timed against cuDNN's algorithms once and the fastest kept.
/// A generation runs the same few shapes for every step, so the one-off search (part of the first image's
/// warm-up) pays for itself; diffusers users turn it on by hand (`torch.backends.cudnn.benchmark = True`).
fn enable_cudnn_autotuning() {
    tch::Cuda::cudnn_set_benchmark(true);
}

/// `--dtype auto` for families published in bf16 whose activations overflow f16 (SD3 / 3.5: its MMDiT and T5):
/// bf16 on a CUDA GPU with bf16 tensor cores (compute capability 8.0 and later), else `fallback`, the ordinary
/// `auto` choice.
pub fn auto_dtype_for_bf16_family(device: Device, fallback: Kind) -> Kind {
    match device {
        Device::Cuda(i) if crate::accel::GpuInfo::query(i).is_ok_and(|g| g.native_bf16()) => Kind::BFloat16,
        _ => fallback,
    }
}

/// A precision request as the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    F32,
    F16,
    BF16,
}

impl FromStr for DTypeChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "f32" | "fp32" | "float32" | "float" => Self::F32,
            "f16" | "fp16" | "float16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            other => bail!("invalid dtype `{other}`: expected f32, f16, bf16 or auto"),
        })
    }
}

impl fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

impl DTypeChoice {
    /// The tch kind for this choice on `device`. `force_f16_on_cpu` is the user's explicit override.
    pub fn resolve(self, device: Device, force_f16_on_cpu: bool) -> Result<Kind> {
        match (self, device) {
            (Self::Auto, Device::Cpu) => {
                Ok(if CpuFeatures::detect().native_bf16() { Kind::BFloat16 } else { Kind::Float })
            }
            (Self::Auto, Device::Cuda(_)) => Ok(Kind::Half),
            (Self::Auto, _) => Ok(Kind::Half),
            (Self::F16, Device::Cpu) if !force_f16_on_cpu => bail!(
                "f16 on CPU is refused: LibTorch has no fast CPU f16 kernels (about 300x slower than bf16). \
                 Use --dtype bf16 (fast on CPUs with avx512_bf16/AMX) or f32; pass --force-f16 to insist"
            ),
            (Self::F32, _) => Ok(Kind::Float),
            (Self::F16, _) => Ok(Kind::Half),
            (Self::BF16, _) => Ok(Kind::BFloat16),
        }
    }
}

/// Short name of a tch kind, as users write it.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        Kind::Int64 => "i64",
        Kind::Int => "i32",
        Kind::Uint8 => "u8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

/// CPU features that decide which kernels LibTorch can use fast.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512dq: bool,
    pub avx512_bf16: bool,
    pub avx512_fp16: bool,
    pub amx_bf16: bool,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // amx and avx512_fp16 are not covered by std's macro on every toolchain; /proc/cpuinfo is.
            let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let has = |f: &str| flags.split_whitespace().any(|w| w == f);
            Self {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                avx512vl: std::arch::is_x86_feature_detected!("avx512vl"),
                avx512dq: std::arch::is_x86_feature_detected!("avx512dq"),
                avx512_bf16: has("avx512_bf16"),
                avx512_fp16: has("avx512_fp16"),
                amx_bf16: has("amx_bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::default()
        }
    }

    /// bf16 matmuls run natively (not emulated through f32).
    pub fn native_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// Whether sd-rs's own AVX-512 BF16 kernels (fused attention, Winograd transforms) can run: x86-64 with
    /// AVX-512 F, BW, VL and BF16, as the compiler's feature detection sees them; detected once.
    pub fn bf16_kernels() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *DETECTED.get_or_init(|| {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bf16")
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The names of the features present, for `sd doctor`.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512dq, "avx512dq"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx512_fp16, "avx512_fp16"),
            (self.amx_bf16, "amx_bf16"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }
}

/// Use `n` threads for compute: LibTorch's intra-op pool (which also runs sd-rs's fused attention and Winograd
/// transforms, [`crate::parallel`]) and the rayon pool of the rest of sd-rs's own loops (key/value packing,
/// watermarking). The rayon pool can be sized once per process; later calls only change LibTorch's.
pub fn set_compute_threads(n: usize) {
    let n = n.max(1);
    tch::set_num_threads(n as i32);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

/// Physical CPU cores (SMT siblings counted once), from `/proc/cpuinfo`'s (physical id, core id) pairs; falls back
/// to the logical CPU count. LibTorch's intra-op pool is fastest with one thread per physical core.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut cores = std::collections::HashSet::new();
    let mut package = String::new();
    for line in info.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "physical id" => package = value.trim().to_string(),
            "core id" => {
                cores.insert((package.clone(), value.trim().to_string()));
            }
            _ => {}
        }
    }
    // A process limited to fewer CPUs (taskset, cgroups) should not oversubscribe them.
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_rejects_garbage() {
        assert_eq!("cuda:1".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cuda(1));
        assert_eq!("CPU".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cpu);
        let err = "cuda:x".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(err.contains("CUDA index"), "{err}");
        let err = "tpu".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(err.contains("expected cpu, cuda"), "{err}");
    }

    #[test]
    fn f16_on_cpu_is_refused_unless_forced() {
        let err = DTypeChoice::F16.resolve(Device::Cpu, false).unwrap_err().to_string();
        assert!(err.contains("300x"), "{err}");
        assert_eq!(DTypeChoice::F16.resolve(Device::Cpu, true).unwrap(), Kind::Half);
        let auto = DTypeChoice::Auto.resolve(Device::Cpu, false).unwrap();
        let expect = if CpuFeatures::detect().native_bf16() { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(auto, expect);
    }
}
