//! `cargo xtask setup`: everything a fresh Debian machine needs that cargo does not fetch itself.
//!
//! LibTorch 2.13.0 (what tch 0.26 links against) is taken from the PyPI wheel `torch==2.13.0`, which carries the
//! same shared libraries as the LibTorch archive. Only the CPU libraries and headers are unpacked; the wheel's
//! CPU library names two small CUDA runtime libraries as dependencies, so those come from their own wheels
//! (they are never used on CPU). Everything lands in `.libtorch/`, which `.cargo/config.toml` points torch-sys at.
//! A user who sets LIBTORCH or LIBTORCH_USE_PYTORCH themselves (e.g. for a CUDA build) is left alone.
//!
//! Data files go to `.sd-data/`: the real CLIP BPE vocabulary from the PyPI package `open-clip-torch`, and
//! scikit-image's public-domain astronaut photo (NASA) from its wheel, used by the TAESD round-trip test.
//!
//! The `sd serve` tests talk to the server the way its users do, so they need programs cargo cannot build:
//! Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`) drive the web page
//! in a headless browser, and `redis-server` backs the shared job queue (`--queue redis://…`). As root on Debian
//! the missing ones are installed with apt-get; elsewhere set-up stops and names the packages. The opt-out tests
//! of `sd train` check that exiftool reads the XMP they write as sd-rs does, so Debian's `libimage-exiftool-perl`
//! is installed the same way. The real API clients (`webuiapi` for the AUTOMATIC1111 API, `openai` for the OpenAI
//! one) go into a virtualenv at `target/clients` at the versions pinned in `scripts/clients/requirements.txt`, so a
//! client release cannot change what the compatibility test checks; the independent readers the output tests use
//! (c2pa-python, piexif) live there too, so the tests need no 5 GB fixtures environment.

use crate::util::{have, is_root, root, run_cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

pub const TORCH_VERSION: &str = "2.13.0";
const WHEELS: &[&str] = &["torch==2.13.0", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"];
pub const TORCH_LIBS: &[&str] = &["libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"];
const CUDA_STUBS: &[&str] = &["libcudart.so.13", "libcupti.so.13"];
const OPEN_CLIP: &str = "open-clip-torch==3.3.0";
pub const BPE_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";
const SKIMAGE: &str = "scikit-image==0.25.2";
pub const PHOTO_FILE: &str = "astronaut.png";

pub fn run() -> Result<()> {
    run_with(false)
}

/// `cargo xtask setup [--cuda]`.
pub fn run_args(args: &[String]) -> Result<()> {
    match args {
        [] => run_with(false),
        [flag] if flag == "--cuda" => run_with(true),
        _ => bail!("`cargo xtask setup` takes no arguments but --cuda (LibTorch with CUDA from PyPI)"),
    }
}

/// Set-up; `cuda` installs the CUDA build of LibTorch (`setup_cuda.rs`) instead of the CPU libraries.
pub fn run_with(cuda: bool) -> Result<()> {
    let root = root();
    // torch-sys compiles a small C++ shim against LibTorch's headers, and some crates build C code. The others are
    // for the server and opt-out tests (see the module comment); asking for all of them at once means one apt-get run.
    ensure_tools(&["g++", "chromium", "chromedriver", "redis-server", "exiftool"])?;
    libtorch(&root, cuda)?;
    data(&root)?;
    photo(&root)?;
    demo_tokenizer(&root)?;
    api_clients(&root)?;
    // The wheels are only containers for the files taken out above (the torch wheel alone is 0.5 GB); keeping them
    // would only eat the disk that the test build needs.
    let _ = fs::remove_dir_all(root.join("target/wheels"));
    Ok(())
}

/// The demo model's tokenizer files, derived from the CLIP vocabulary rather than committed (third-party data).
fn demo_tokenizer(root: &Path) -> Result<()> {
    let dir = root.join("models/sd-tiny-shapes/tokenizer");
    if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() {
        return Ok(());
    }
    let script = root.join("scripts/setup/clip_tokenizer_files.py");
    let bpe = root.join(".sd-data").join(BPE_FILE);
    run_cmd(
        root,
        "python3",
        &[script.to_str().context("path")?, bpe.to_str().context("path")?, dir.to_str().context("path")?],
    )
    .context("cannot write the demo model's tokenizer files")?;
    eprintln!("setup: tokenizer files of models/sd-tiny-shapes written from {}", bpe.display());
    Ok(())
}

fn libtorch(root: &Path, cuda: bool) -> Result<()> {
    let ours = root.join(".libtorch");
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        eprintln!("setup: LIBTORCH_USE_PYTORCH is set, using the Python torch installation");
        return Ok(());
    }
    if let Ok(user) = std::env::var("LIBTORCH") {
        let user = PathBuf::from(user);
        if user != ours && fs::canonicalize(&user).ok() != fs::canonicalize(&ours).ok() {
            eprintln!("setup: LIBTORCH={} set by you, not installing one", user.display());
            return Ok(());
        }
    }
    let version_file = ours.join("build-version");
    let current = fs::read_to_string(&version_file).is_ok_and(|v| v.trim() == TORCH_VERSION)
        && ours.join("lib/libtorch_cpu.so").exists();
    // A CUDA install also serves the CPU, so a plain set-up keeps it.
    if current && (!cuda || crate::setup_cuda::installed(&ours)) {
        return Ok(());
    }
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!(
            "automatic LibTorch set-up supports x86_64 Linux only; on this machine install LibTorch {TORCH_VERSION} \
             yourself and set LIBTORCH to its folder (or LIBTORCH_USE_PYTORCH=1 with torch=={TORCH_VERSION} in Python)"
        );
    }
    ensure_tools(&["python3", "unzip"])?;
    if cuda {
        ensure_tools(&["ldd"])?;
        return crate::setup_cuda::install(root, &ours);
    }
    eprintln!("setup: installing LibTorch {TORCH_VERSION} from PyPI wheels into {}", ours.display());
    let wheels = root.join("target/wheels");
    fs::create_dir_all(&wheels)?;
    pip_download(root, &wheels, WHEELS, true)?;
    let staging = root.join(".libtorch.partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("lib"))?;
    let unpack = root.join("target/wheels/unpacked");
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    let torch_whl = find_wheel(&wheels, "torch-2.13.0-")?;
    let mut patterns = vec!["torch/include/*".to_string()];
    patterns.extend(TORCH_LIBS.iter().map(|l| format!("torch/lib/{l}")));
    let mut args = vec!["-q", "-o", torch_whl.to_str().context("path")?];
    args.extend(patterns.iter().map(|s| s.as_str()));
    args.extend(["-d", unpack.to_str().context("path")?]);
    run_cmd(root, "unzip", &args)?;
    for prefix in ["nvidia_cuda_runtime-", "nvidia_cuda_cupti-"] {
        let whl = find_wheel(&wheels, prefix)?;
        run_cmd(
            root,
            "unzip",
            &["-q", "-o", whl.to_str().context("path")?, "nvidia/cu13/lib/*", "-d", unpack.to_str().context("path")?],
        )?;
    }
    fs::rename(unpack.join("torch/include"), staging.join("include"))?;
    for lib in TORCH_LIBS {
        fs::rename(unpack.join("torch/lib").join(lib), staging.join("lib").join(lib))?;
    }
    for lib in CUDA_STUBS {
        fs::rename(unpack.join("nvidia/cu13/lib").join(lib), staging.join("lib").join(lib))?;
    }
    fs::write(staging.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    let _ = fs::remove_dir_all(&unpack);
    let _ = fs::remove_dir_all(&ours);
    fs::rename(&staging, &ours)?;
    eprintln!("setup: LibTorch {TORCH_VERSION} ready in {}", ours.display());
    Ok(())
}

fn data(root: &Path) -> Result<()> {
    let dir = root.join(".sd-data");
    let bpe = dir.join(BPE_FILE);
    if bpe.exists() {
        return Ok(());
    }
    ensure_tools(&["python3", "unzip"])?;
    fs::create_dir_all(&dir)?;
    let wheels = root.join("target/wheels");
    fs::create_dir_all(&wheels)?;
    pip_download(root, &wheels, &[OPEN_CLIP], false)?;
    let whl = find_wheel(&wheels, "open_clip_torch-3.3.0-")?;
    let out = std::process::Command::new("unzip")
        .args(["-p", whl.to_str().context("path")?, &format!("open_clip/{BPE_FILE}")])
        .output()
        .context("cannot run unzip")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("{} does not contain open_clip/{BPE_FILE}", whl.display());
    }
    let tmp = dir.join(format!(".{BPE_FILE}.partial"));
    fs::write(&tmp, &out.stdout)?;
    fs::rename(&tmp, &bpe)?;
    eprintln!("setup: CLIP vocabulary ready in {}", bpe.display());
    Ok(())
}

fn photo(root: &Path) -> Result<()> {
    let dir = root.join(".sd-data");
    let dest = dir.join(PHOTO_FILE);
    if dest.exists() {
        return Ok(());
    }
    ensure_tools(&["python3", "unzip"])?;
    fs::create_dir_all(&dir)?;
    let wheels = root.join("target/wheels");
    fs::create_dir_all(&wheels)?;
    pip_download(root, &wheels, &[SKIMAGE], true)?;
    let whl = find_wheel(&wheels, "scikit_image-0.25.2-")?;
    let out = std::process::Command::new("unzip")
        .args(["-p", whl.to_str().context("path")?, &format!("skimage/data/{PHOTO_FILE}")])
        .output()
        .context("cannot run unzip")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("{} does not contain skimage/data/{PHOTO_FILE}", whl.display());
    }
    let tmp = dir.join(format!(".{PHOTO_FILE}.partial"));
    fs::write(&tmp, &out.stdout)?;
    fs::rename(&tmp, &dest)?;
    eprintln!("setup: test photo ready in {}", dest.display());
    Ok(())
}

/// Download `specs` as pip would install them on Linux x86-64 with CPython 3.11, whatever this machine is;
/// `with_deps` lets pip resolve their requirements too (the NVIDIA wheels of the CUDA set-up).
pub fn pip_download_platform(root: &Path, dest: &Path, specs: &[&str], with_deps: bool) -> Result<()> {
    let mut args: Vec<String> = ["-m", "pip", "download", "--no-cache-dir", "--only-binary=:all:", "-q", "-d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dest.to_str().context("path")?.to_string());
    if !with_deps {
        args.push("--no-deps".into());
    }
    args.extend(["--python-version", "3.11", "--implementation", "cp"].map(String::from));
    // Every glibc tag a manylinux wheel of these packages uses (NCCL's is 2_18, cuBLAS's 2_27, …).
    for minor in 5..=28 {
        args.push("--platform".into());
        args.push(format!("manylinux_2_{minor}_x86_64"));
    }
    args.extend(["--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64"].map(String::from));
    args.extend(specs.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cmd(root, "python3", &refs)
        .context("pip could not download the wheels (is PyPI reachable? on Debian: apt-get install python3-pip)")
}

fn pip_download(root: &Path, dest: &Path, specs: &[&str], linux_wheels: bool) -> Result<()> {
    let mut args: Vec<&str> =
        vec!["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:", "-q", "-d"];
    args.push(dest.to_str().context("path")?);
    if linux_wheels {
        // Pin the platform so any local Python version fetches the same wheels.
        args.extend([
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_25_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
        ]);
    }
    args.extend(specs);
    run_cmd(root, "python3", &args)
        .context("pip could not download the wheels (is PyPI reachable? on Debian: apt-get install python3-pip)")
}

pub fn find_wheel(dir: &Path, prefix: &str) -> Result<PathBuf> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(prefix) && name.ends_with(".whl") {
            return Ok(p);
        }
    }
    bail!("no wheel starting with {prefix} in {}", dir.display())
}

/// The virtualenv `target/clients` with the pinned API client libraries (the server's client test) and the
/// independent readers of our output files (c2pa-python, piexif).
///
/// It is rebuilt only when the pins changed (a copy of the requirements file is kept as a stamp) or the packages
/// no longer import, so a second set-up costs one Python start.
fn api_clients(root: &Path) -> Result<()> {
    let venv = root.join("target/clients");
    let py = venv.join("bin/python");
    let req = root.join("scripts/clients/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = fs::read_to_string(&req).with_context(|| format!("cannot read {}", req.display()))?;
    let imports = || {
        std::process::Command::new(&py)
            .args(["-c", "import webuiapi, openai, c2pa, piexif, defusedxml"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && imports() {
        return Ok(());
    }
    ensure_tools(&["python3", "python3-venv"])?;
    // A virtualenv whose Python no longer starts (the system Python it links to was replaced) is made anew.
    let runs = std::process::Command::new(&py).args(["-c", "pass"]).output().is_ok_and(|o| o.status.success());
    if !runs {
        run_cmd(root, "python3", &["-m", "venv", "--clear", venv.to_str().context("path")?])
            .context("cannot create the API clients virtualenv (on Debian: apt-get install python3-venv)")?;
    }
    let py_s = py.to_str().context("path")?;
    run_cmd(
        root,
        py_s,
        &["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", req.to_str().context("path")?],
    )
    .context("pip could not install the API clients (is PyPI reachable?)")?;
    if !imports() {
        bail!("{} cannot import webuiapi, openai, c2pa and piexif after installing {}", py.display(), req.display());
    }
    fs::write(&stamp, wanted)?;
    eprintln!("setup: API clients ready in {}", venv.display());
    Ok(())
}

/// Whether `tool` is usable. Two entries are not programs but parts of Python that Debian ships separately:
/// `python3-pip` (`python3 -m pip`) and `python3-venv` (`python3 -m venv` needs `ensurepip`).
fn present(tool: &str) -> bool {
    let python = |args: &[&str]| {
        have("python3") && std::process::Command::new("python3").args(args).output().is_ok_and(|o| o.status.success())
    };
    match tool {
        "python3-pip" => python(&["-m", "pip", "--version"]),
        "python3-venv" => python(&["-c", "import ensurepip"]),
        program => have(program),
    }
}

/// The Debian package that provides `tool`, where its name differs from the tool's.
fn debian_package(tool: &str) -> &str {
    match tool {
        "chromedriver" => "chromium-driver",
        "exiftool" => "libimage-exiftool-perl",
        "ldd" => "libc-bin",
        other => other,
    }
}

/// Make sure `tools` exist (and pip, which every Python step needs); on Debian as root, install the packages of
/// the missing ones with apt-get.
fn ensure_tools(tools: &[&str]) -> Result<()> {
    let mut missing: Vec<&str> = tools.iter().copied().filter(|t| !present(t)).collect();
    if !missing.contains(&"python3-pip") && !present("python3-pip") {
        missing.push("python3-pip");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| debian_package(t)).collect();
    packages.dedup();
    if is_root() && have("apt-get") {
        eprintln!("setup: installing {} with apt-get", packages.join(" "));
        run_cmd(Path::new("/"), "apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(packages.iter().copied());
        run_cmd(Path::new("/"), "apt-get", &args)?;
        let still: Vec<&str> = missing.iter().copied().filter(|t| !present(t)).collect();
        if !still.is_empty() {
            bail!("apt-get installed {} but {} still missing", packages.join(" "), still.join(", "));
        }
        return Ok(());
    }
    bail!("missing tools: {} (on Debian: sudo apt-get install {})", missing.join(", "), packages.join(" "))
}
