// sd-core's build: the rpath/CUDA link arguments every LibTorch crate gets, plus the C++ shim `shim/accel.cpp`
// (LibTorch's build configuration and allocator statistics, which tch does not expose).
#[path = "../../build-support/link_libtorch.rs"]
mod link_libtorch;

use std::path::PathBuf;

fn main() {
    link_libtorch::main();
    println!("cargo:rerun-if-changed=shim/accel.cpp");
    println!("cargo:rerun-if-changed=shim/onednn.cpp");
    println!("cargo:rerun-if-changed=shim/parallel.cpp");
    // torch-sys publishes the library folder it linked; the headers sit beside it in both layouts it supports
    // (a LibTorch archive and a Python torch installation).
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report where LibTorch is (DEP_TCH_LIBTORCH_LIB); run `cargo xtask setup`")
    };
    let include = PathBuf::from(&lib).join("../include");
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
    // `shim/parallel.cpp` runs loops through `at::parallel_for`, which LibTorch's headers implement with OpenMP
    // pragmas: compiled with OpenMP and linked to the OpenMP runtime LibTorch itself loads (the one in its library
    // folder, whatever name the packaging gave it), so both share one thread pool.
    let gomp = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libgomp") && n.contains(".so"))
        })
    });
    let mut parallel = cc::Build::new();
    parallel
        .cpp(true)
        .file("shim/parallel.cpp")
        .include(&include)
        .flag("-std=c++20")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    match gomp {
        Some(path) => {
            parallel.flag("-fopenmp");
            // By file name (`-l:libgomp.so.1`), so every binary that links sd-core gets it too.
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("libgomp.so.1");
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
        // No OpenMP runtime beside LibTorch: the loop runs on the calling thread alone (still correct).
        None => println!("cargo:warning=no libgomp in {lib}: sd-rs's own parallel loops will run single-threaded"),
    }
    parallel.compile("sdrs_parallel");
}
