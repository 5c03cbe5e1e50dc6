//! `sd doctor`: what this machine and this LibTorch can do, and what `auto` choices would pick.
//!
//! Versions come from the loaded library itself (`at::show_config()` through `sd_core::accel`), not from a file
//! beside it, so a `LIBTORCH` or Python torch the user brought is described as truthfully as our own install.

use anyhow::Result;
use sd_core::accel::{loaded_library, GpuInfo, LibTorchBuild};
use sd_core::device::{kind_name, CpuFeatures, DTypeChoice};
use tch::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// What `--dtype auto` and `--attention auto` pick on one GPU.
fn gpu_auto(gpu: &GpuInfo) -> (&'static str, &'static str, &'static str) {
    // f16 everywhere (diffusers' usual torch_dtype); bf16 for SD3, whose T5 and MMDiT are published in bf16 and
    // overflow f16 activations, where the GPU has bf16 tensor cores.
    let sd3 = if gpu.native_bf16() { "bf16" } else { "f16 (no native bf16 on this GPU)" };
    // LibTorch's SDPA picks flash attention from compute capability 8.0, memory-efficient attention before that.
    let attention = if gpu.native_bf16() { "sdpa (flash attention)" } else { "sdpa (memory-efficient attention)" };
    ("f16", sd3, attention)
}

fn gib(bytes: i64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn cuda_version(v: i64) -> String {
    // cudaRuntimeGetVersion / cuDriverGetVersion encode 13.0 as 13000.
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn cudnn_version(v: i64) -> String {
    // cudnnGetVersion: 9.20.0 is 92000 from cuDNN 9 on (major·10000 + minor·100 + patch).
    if v >= 90000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

pub fn run(args: Args) -> Result<()> {
    let features = CpuFeatures::detect();
    let cuda = tch::Cuda::is_available();
    let cuda_count = if cuda { tch::Cuda::device_count() } else { 0 };
    let mps = tch::utils::has_mps();
    let threads = tch::get_num_threads();
    let auto_dtype = DTypeChoice::Auto.resolve(Device::Cpu, false)?;
    let library = loaded_library("libtorch_cpu.so");
    let location = library.as_deref().and_then(|p| p.parent()).map(|d| d.display().to_string());
    let build = LibTorchBuild::query()?;
    let version = build.version.clone().unwrap_or_else(|| "unknown (the library did not say)".into());
    // Runtime versions are only asked of a CUDA that works: without a driver LibTorch throws.
    let (cudart, cudnn) = if cuda {
        (Some(cuda_version(tch::utils::version_cudart())), Some(cudnn_version(tch::utils::version_cudnn())))
    } else {
        (None, None)
    };
    let gpus = if cuda { GpuInfo::all()? } else { Vec::new() };
    let variant = if build.cuda_library_loaded { "CUDA" } else { "CPU-only" };
    let roots: Vec<String> = sd_core::model_dir::hf_cache_roots().iter().map(|p| p.display().to_string()).collect();
    if args.json {
        let gpu_json: Vec<_> = gpus
            .iter()
            .map(|g| {
                let (dtype, sd3, attention) = gpu_auto(g);
                serde_json::json!({
                    "index": g.index, "name": g.name,
                    "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                    "multiprocessors": g.multiprocessors, "memory_bytes": g.total_bytes,
                    "driver_cuda": cuda_version(g.driver_cuda_version as i64),
                    "auto": {"dtype": dtype, "dtype_sd3": sd3, "attention": attention},
                })
            })
            .collect();
        let v = serde_json::json!({
            "libtorch": {
                "version": build.version, "path": location, "variant": variant,
                "built_for_cuda": build.cuda_version, "built_for_cudnn": build.cudnn_version,
                "cpu_capability": build.cpu_capability, "config": build.config,
            },
            "cuda": {"available": cuda, "devices": cuda_count, "runtime": cudart, "cudnn": cudnn, "gpus": gpu_json},
            "mps": mps,
            "threads": threads,
            "cpu_features": features.names(),
            "auto_dtype_cpu": kind_name(auto_dtype),
            "model_search": {"folders": "any path given with --model", "hf_cache": roots},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("sd-rs {} — doctor", env!("CARGO_PKG_VERSION"));
    println!("LibTorch      {version}, {variant} ({})", location.as_deref().unwrap_or("location unknown"));
    if let (Some(c), true) = (&build.cuda_version, build.cuda_library_loaded) {
        println!("              built for CUDA {c}, cuDNN {}", build.cudnn_version.as_deref().unwrap_or("?"));
    }
    println!(
        "CUDA          {}",
        match (cuda, build.cuda_library_loaded) {
            (true, _) => format!(
                "available, {cuda_count} device(s), runtime {}, cuDNN {}",
                cudart.as_deref().unwrap_or("?"),
                cudnn.as_deref().unwrap_or("?")
            ),
            (false, true) => "not available (CUDA libraries loaded, but no NVIDIA driver or GPU found)".into(),
            (false, false) =>
                "not available (CPU-only LibTorch: `cargo xtask setup --cuda` installs a CUDA one)".into(),
        }
    );
    for g in &gpus {
        let (dtype, sd3, attention) = gpu_auto(g);
        println!(
            "  cuda:{}      {}, {:.1} GiB, compute capability {}.{}, {} SMs, driver CUDA {}",
            g.index,
            g.name,
            gib(g.total_bytes),
            g.compute_capability.0,
            g.compute_capability.1,
            g.multiprocessors,
            cuda_version(g.driver_cuda_version as i64)
        );
        println!("              auto: --dtype {dtype} (SD3: {sd3}), attention {attention}, cuDNN autotuning on");
    }
    println!("MPS           {}", if mps { "available" } else { "not available" });
    println!("CPU threads   {threads} (LibTorch intra-op)");
    println!(
        "CPU features  {}{}",
        if features.names().is_empty() { "none of note".into() } else { features.names().join(" ") },
        build.cpu_capability.as_deref().map(|c| format!(" (LibTorch kernels: {c})")).unwrap_or_default()
    );
    println!(
        "auto dtype    {} on CPU ({})",
        kind_name(auto_dtype),
        if features.native_bf16() { "native bf16 found" } else { "no native bf16: bf16 would be emulated" }
    );
    println!("f16 on CPU    refused unless --force-f16 (no fast CPU f16 kernels)");
    println!("models        a diffusers folder passed with --model, or a repo id in the HF cache:");
    for r in roots {
        println!("                {r}");
    }
    Ok(())
}
