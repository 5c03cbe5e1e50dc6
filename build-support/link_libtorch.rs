// Shared build script for every crate that links LibTorch (referenced as `build = "../../build-support/link_libtorch.rs"`).
//
// Why it exists: torch-sys's own `-Wl,-rpath` reaches only its C++ shim, so without this every binary, test,
// bench and doctest would fail at start-up with "libtorch_cpu.so: cannot open shared object file" unless the
// user exported LD_LIBRARY_PATH. torch-sys declares `links = "tch"`, so a crate that depends on it directly sees
// the library folder as DEP_TCH_LIBTORCH_LIB and can bake it into its binaries as an rpath.
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // `cargo xtask setup --cuda` adds the CUDA libraries to the same folder: watching the folder (not the file,
    // whose absence would rerun this script on every build) relinks the binaries against them.
    println!("cargo:rerun-if-changed={lib}");
    // rustc links with --as-needed: with a CUDA LibTorch nothing references libtorch_cuda.so directly, the
    // linker drops it, and CUDA then reports itself unavailable. Force it in only when it exists, so the
    // CPU-only set-up never loads CUDA.
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
