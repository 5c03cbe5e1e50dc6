//! `sd doctor`: what this machine and this LibTorch can do, and what `auto` choices would pick.

use anyhow::Result;
use sd_core::device::{kind_name, CpuFeatures, DTypeChoice};
use tch::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let features = CpuFeatures::detect();
    let cuda = tch::Cuda::is_available();
    let cuda_count = tch::Cuda::device_count();
    let mps = tch::utils::has_mps();
    let threads = tch::get_num_threads();
    let auto_dtype = DTypeChoice::Auto.resolve(Device::Cpu, false)?;
    let libtorch = libtorch_location();
    let version = libtorch_version(libtorch.as_deref());
    let roots: Vec<String> = sd_core::model_dir::hf_cache_roots().iter().map(|p| p.display().to_string()).collect();
    if args.json {
        let v = serde_json::json!({
            "libtorch": {"version": version, "path": libtorch},
            "cuda": {"available": cuda, "devices": cuda_count, "cudnn": tch::Cuda::cudnn_is_available()},
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
    println!("LibTorch      {} ({})", version, libtorch.as_deref().unwrap_or("location unknown"));
    println!(
        "CUDA          {}",
        if cuda {
            format!("available, {cuda_count} device(s), cuDNN {}", tch::Cuda::cudnn_is_available())
        } else {
            "not available".into()
        }
    );
    println!("MPS           {}", if mps { "available" } else { "not available" });
    println!("CPU threads   {threads} (LibTorch intra-op)");
    println!(
        "CPU features  {}",
        if features.names().is_empty() { "none of note".into() } else { features.names().join(" ") }
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

/// The folder LibTorch was loaded from, read from this process's own mappings.
fn libtorch_location() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("libtorch_cpu.so"))
        .map(|p| std::path::Path::new(p).parent().map(|d| d.display().to_string()).unwrap_or_default())
}

fn libtorch_version(lib_dir: Option<&str>) -> String {
    let from_file = lib_dir
        .and_then(|d| std::fs::read_to_string(std::path::Path::new(d).join("../build-version")).ok())
        .map(|s| s.trim().to_string());
    from_file.unwrap_or_else(|| "2.13.x (build-version file not found)".into())
}
