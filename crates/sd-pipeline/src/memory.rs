//! Whether a full-image VAE decode fits in memory (RAM, or the GPU's memory on a GPU), so large images fall back
//! to tiled decoding instead of failing (or swapping) halfway through a run.

use sd_models::vae::VaeConfig;
use tch::{Device, Kind};

/// Bytes the OS reports as available for new allocations (`MemAvailable` in /proc/meminfo), if known.
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Rough peak working memory of decoding `batch` images of `h`×`w` pixels at once: the decoder's last-but-one
/// level runs at full resolution with `block_out_channels[1]` channels, and a resnet there holds about four such
/// activations (input, normed, conv output, residual sum).
pub fn vae_decode_bytes(cfg: &VaeConfig, batch: i64, h: i64, w: i64, kind: Kind) -> u64 {
    let widest_full_res = cfg.block_out_channels.get(1).or(cfg.block_out_channels.first()).copied().unwrap_or(128);
    (4 * batch * widest_full_res * h * w) as u64 * kind.elt_size_in_bytes() as u64
}

/// Bytes free for new tensors on `device`: the GPU's free memory as the driver counts it plus what LibTorch's
/// caching allocator holds unused, or the system's available RAM for the CPU.
pub fn available_on(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => available_bytes(),
        d => {
            let (free, _total) = sd_core::accel::device_memory(d)?;
            let cached = sd_core::accel::MemoryStats::of(d).map(|m| (m.reserved.0 - m.allocated.0).max(0)).unwrap_or(0);
            Some((free.max(0) + cached) as u64)
        }
    }
}

/// True when the estimate exceeds 80 % of the memory available on `device` (unknown availability counts as
/// fitting).
pub fn vae_decode_needs_tiling(cfg: &VaeConfig, batch: i64, h: i64, w: i64, kind: Kind, device: Device) -> bool {
    match available_on(device) {
        Some(avail) => vae_decode_bytes(cfg, batch, h, w, kind) as f64 > 0.8 * avail as f64,
        None => false,
    }
}
