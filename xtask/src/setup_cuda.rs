//! `cargo xtask setup --cuda`: LibTorch 2.13.0 with CUDA from PyPI, in the same `.libtorch/` the CPU set-up fills.
//!
//! PyPI's `torch==2.13.0` wheel for Linux x86-64 *is* the CUDA build: besides `libtorch_cpu.so` it carries
//! `libtorch_cuda.so` and friends, and its metadata names the NVIDIA wheels (cuBLAS, cuDNN, cuFFT, NCCL, …) those
//! need, at pinned versions. This task reads those requirements out of the wheel's own `METADATA`, lets pip
//! resolve them for Linux x86-64 (so the versions are exactly what `pip install torch==2.13.0` would put beside
//! it), and unpacks every shared library into `.libtorch/lib` next to LibTorch's. Torch's libraries carry
//! `$ORIGIN` in their RUNPATH and the NVIDIA libraries find each other the same way, so with the rpath the build
//! already bakes into every binary (`build-support/link_libtorch.rs`) `sd` finds all of them without
//! `LD_LIBRARY_PATH`; `ldd` checks that before the folder replaces the old one. The NVIDIA driver
//! (`libcuda.so.1`) is the system's and is neither installed nor touched.
//!
//! The CUDA folder is a superset of the CPU one, so a later plain `cargo xtask setup` keeps it; going back to the
//! small CPU install is `rm -rf .libtorch && cargo xtask setup`.

use crate::setup::{find_wheel, pip_download_platform, TORCH_LIBS, TORCH_VERSION};
use crate::util::run_cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `.libtorch/variant` holds this word after a CUDA install; the CPU install has no such file.
pub const VARIANT_FILE: &str = "variant";
pub const CUDA_VARIANT: &str = "cuda";
/// The libraries of the torch wheel a CUDA process may load, besides the CPU ones. `libtorch_cuda_linalg.so` and
/// `libcaffe2_nvrtc.so` are opened by LibTorch on first use (linear algebra, JIT-compiled kernels).
const TORCH_CUDA_LIBS: &[&str] =
    &["libtorch_cuda.so", "libc10_cuda.so", "libtorch_cuda_linalg.so", "libtorch_nvshmem.so", "libcaffe2_nvrtc.so"];
/// Measured for torch 2.13.0: 0.5 GB torch wheel + 1.9 GB of NVIDIA wheels, 4.3 GB unpacked. Room is asked for
/// both at once (wheels are deleted after unpacking) with a margin for the test build.
const NEEDED_GB: f64 = 8.0;

/// Whether `.libtorch` already holds the CUDA install of this version.
pub fn installed(ours: &Path) -> bool {
    fs::read_to_string(ours.join(VARIANT_FILE)).is_ok_and(|v| v.trim() == CUDA_VARIANT)
        && ours.join("lib/libtorch_cuda.so").exists()
}

/// The NVIDIA requirements of the torch wheel for Linux, markers removed: `cuda-toolkit[cublas,…]==13.0.3`,
/// `nvidia-cudnn-cu13==9.20.0.48`, … Python-only packages (triton, cuda-bindings) are left out: LibTorch's C++
/// libraries do not load them.
pub fn nvidia_requirements(metadata: &str) -> Vec<String> {
    metadata
        .lines()
        .filter_map(|l| l.strip_prefix("Requires-Dist:"))
        .filter_map(|req| {
            let (spec, marker) = req.split_once(';').unwrap_or((req, ""));
            let spec = spec.trim();
            let name = spec.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).next()?;
            let nvidia = name.starts_with("nvidia-") || name == "cuda-toolkit";
            let linux = marker.contains("platform_system == \"Linux\"") && !marker.contains("extra ==");
            (nvidia && linux).then(|| spec.to_string())
        })
        .collect()
}

pub fn install(root: &Path, ours: &Path) -> Result<()> {
    if let Some(free) = crate::util::free_disk_gb(root) {
        if free < NEEDED_GB {
            bail!(
                "the CUDA LibTorch needs about {NEEDED_GB:.0} GB free on the disk holding {} (2.4 GB of wheels, \
                 4.3 GB unpacked into .libtorch/); only {free:.1} GB are free",
                root.display()
            );
        }
    }
    eprintln!(
        "setup: installing LibTorch {TORCH_VERSION} with CUDA into {} (downloads ~2.4 GB of PyPI wheels, ~4.3 GB \
         on disk; no NVIDIA driver is installed or changed)",
        ours.display()
    );
    let wheels = root.join("target/wheels");
    let nvidia = wheels.join("cuda");
    let _ = fs::remove_dir_all(&nvidia);
    fs::create_dir_all(&nvidia)?;
    pip_download_platform(root, &wheels, &[&format!("torch=={TORCH_VERSION}")], false)?;
    let torch_whl = find_wheel(&wheels, &format!("torch-{TORCH_VERSION}-"))?;
    let metadata = unzip_text(&torch_whl, &format!("torch-{TORCH_VERSION}.dist-info/METADATA"))?;
    let reqs = nvidia_requirements(&metadata);
    if reqs.is_empty() {
        bail!("{} names no NVIDIA libraries: not a CUDA build of torch", torch_whl.display());
    }
    eprintln!("setup: the torch wheel requires {}", reqs.join(", "));
    let req_refs: Vec<&str> = reqs.iter().map(String::as_str).collect();
    pip_download_platform(root, &nvidia, &req_refs, true)?;

    let staging = root.join(".libtorch.partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("lib"))?;
    let unpack = wheels.join("unpacked");
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    let mut patterns = vec!["torch/include/*".to_string()];
    patterns.extend(TORCH_LIBS.iter().chain(TORCH_CUDA_LIBS).map(|l| format!("torch/lib/{l}")));
    let mut args = vec!["-q", "-o", torch_whl.to_str().context("path")?];
    args.extend(patterns.iter().map(|s| s.as_str()));
    args.extend(["-d", unpack.to_str().context("path")?]);
    run_cmd(root, "unzip", &args)?;
    fs::rename(unpack.join("torch/include"), staging.join("include"))?;
    for lib in TORCH_LIBS.iter().chain(TORCH_CUDA_LIBS) {
        fs::rename(unpack.join("torch/lib").join(lib), staging.join("lib").join(lib))?;
    }
    let mut installed_wheels = Vec::new();
    for entry in fs::read_dir(&nvidia)? {
        let whl = entry?.path();
        let name = whl.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.ends_with(".whl") {
            continue;
        }
        installed_wheels.push(name.clone());
        // The cuda-toolkit wheel is only a list of requirements: nothing to unpack.
        let listing = Command::new("unzip").arg("-Z1").arg(&whl).output().context("cannot run unzip")?;
        let has_libraries = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|l| l.starts_with("nvidia/") && l.contains("/lib/") && l.contains(".so"));
        if !has_libraries {
            continue;
        }
        let dest = unpack.join(name.trim_end_matches(".whl"));
        fs::create_dir_all(&dest)?;
        // Only shared libraries: headers, static libraries and device bitcode are for building CUDA code.
        let status = Command::new("unzip")
            .args(["-q", "-o"])
            .arg(&whl)
            .args(["nvidia/*/lib/*.so*", "-d"])
            .arg(&dest)
            .status()
            .context("cannot run unzip")?;
        if !status.success() {
            bail!("cannot unpack {}", whl.display());
        }
        flatten_libraries(&dest, &staging.join("lib"))?;
    }
    installed_wheels.sort();
    check_resolvable(&staging.join("lib"))?;
    fs::write(staging.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    fs::write(staging.join(VARIANT_FILE), format!("{CUDA_VARIANT}\n"))?;
    fs::write(staging.join("cuda-wheels.txt"), installed_wheels.join("\n") + "\n")?;
    let _ = fs::remove_dir_all(&unpack);
    let _ = fs::remove_dir_all(&nvidia);
    let _ = fs::remove_dir_all(ours);
    fs::rename(&staging, ours)?;
    eprintln!(
        "setup: LibTorch {TORCH_VERSION} with CUDA ready in {} ({:.1} GB, from {} wheels besides torch's); the next \
         cargo build links it and `sd doctor` shows what it finds",
        ours.display(),
        dir_size(ours) as f64 / 1e9,
        installed_wheels.len()
    );
    Ok(())
}

fn unzip_text(whl: &Path, member: &str) -> Result<String> {
    let out = Command::new("unzip").arg("-p").arg(whl).arg(member).output().context("cannot run unzip")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("{} does not contain {member}", whl.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Move every `*.so*` under `dir` (the wheels keep them in `nvidia/<part>/lib/`) into `lib`.
fn flatten_libraries(dir: &Path, lib: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")) {
                let target: PathBuf = lib.join(p.file_name().context("file name")?);
                fs::rename(&p, &target)?;
            }
        }
    }
    Ok(())
}

/// Every library in `lib` must find its dependencies through RUNPATH alone; only the driver may be missing.
fn check_resolvable(lib: &Path) -> Result<()> {
    let mut missing = Vec::new();
    for name in ["libtorch_cuda.so", "libtorch_cuda_linalg.so", "libc10_cuda.so", "libtorch_nvshmem.so"] {
        let out =
            Command::new("ldd").arg(lib.join(name)).env_remove("LD_LIBRARY_PATH").output().context("cannot run ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains("not found") && !line.contains("libcuda.so") {
                missing.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    if !missing.is_empty() {
        bail!("the unpacked CUDA libraries do not resolve on their own:\n  {}", missing.join("\n  "));
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = p.metadata() {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nvidia_requirements_are_read_from_the_wheel_metadata() {
        let metadata = "Name: torch\nRequires-Dist: filelock\nRequires-Dist: sympy>=1.13.3\n\
            Requires-Dist: cuda-toolkit[cublas,cudart]==13.0.3; platform_system == \"Linux\"\n\
            Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == \"Linux\" and python_version < \"3.15\"\n\
            Requires-Dist: nvidia-cudnn-cu13==9.20.0.48; platform_system == \"Linux\"\n\
            Requires-Dist: triton==3.7.1; platform_system == \"Linux\" and python_version < \"3.15\"\n\
            Requires-Dist: nvidia-foo==1.0; extra == \"foo\"\n";
        assert_eq!(
            nvidia_requirements(metadata),
            vec!["cuda-toolkit[cublas,cudart]==13.0.3".to_string(), "nvidia-cudnn-cu13==9.20.0.48".to_string()]
        );
    }
}
