// sd-core's build: the rpath/CUDA link arguments every LibTorch crate gets, plus the C++ shim `shim/accel.cpp`
// (LibTorch's build configuration and allocator statistics, which tch does not expose).
#[path = "../../build-support/link_libtorch.rs"]
mod link_libtorch;

use std::path::PathBuf;

fn main() {
    link_libtorch::main();
    println!("cargo:rerun-if-changed=shim/accel.cpp");
    println!("cargo:rerun-if-changed=shim/onednn.cpp");
    // torch-sys publishes the library folder it linked; the headers sit beside it in both layouts it supports
    // (a LibTorch archive and a Python torch installation).
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report where LibTorch is (DEP_TCH_LIBTORCH_LIB); run `cargo xtask setup`")
    };
    let include = PathBuf::from(lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .file("shim/accel.cpp")
        .file("shim/onednn.cpp")
        .include(&include)
        // LibTorch 2.13's headers are written for C++20 and the wheel's libraries use the new libstdc++ ABI.
        .flag("-std=c++20")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("sdrs_accel");
}
