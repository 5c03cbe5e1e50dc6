//! `sd doctor` describes the LibTorch this process loaded by asking the library (`at::show_config()`), so the
//! version is right even when no `build-version` file sits next to it, and it never invents a GPU.

use std::process::Command;

fn doctor_json() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).args(["doctor", "--json"]).output().expect("run sd doctor");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON")
}

#[test]
fn the_version_comes_from_the_loaded_library() {
    let v = doctor_json();
    let lib = &v["libtorch"];
    assert_eq!(lib["version"], "2.13.0", "{lib}");
    // The path is where libtorch_cpu.so was mapped from, and the build description is the library's own text.
    let path = lib["path"].as_str().expect("path");
    assert!(std::path::Path::new(path).join("libtorch_cpu.so").exists(), "{path}");
    assert!(lib["config"].as_str().is_some_and(|c| c.contains("TORCH_VERSION=2.13.0")), "{lib}");
    assert!(lib["cpu_capability"].is_string(), "{lib}");
    // The CUDA-only fields are consistent with what LibTorch says about CUDA.
    let cuda_lib = std::path::Path::new(path).join("libtorch_cuda.so").exists();
    assert_eq!(lib["variant"], if cuda_lib { "CUDA" } else { "CPU-only" });
    let cuda = &v["cuda"];
    let available = cuda["available"].as_bool().expect("available");
    let gpus = cuda["gpus"].as_array().expect("gpus");
    if available {
        assert_eq!(gpus.len() as i64, cuda["devices"].as_i64().expect("devices"));
        for g in gpus {
            assert!(g["memory_bytes"].as_i64().is_some_and(|b| b > 0), "{g}");
            assert!(g["compute_capability"].as_str().is_some_and(|c| c.contains('.')), "{g}");
            assert_eq!(g["auto"]["dtype"], "f16", "{g}");
        }
    } else {
        assert!(gpus.is_empty(), "{cuda}");
        assert_eq!(cuda["runtime"], serde_json::Value::Null);
    }
}

#[test]
fn the_text_report_names_version_and_variant() {
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).arg("doctor").output().expect("run sd doctor");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("LibTorch")).expect("LibTorch line");
    assert!(line.contains("2.13.0,") && (line.contains("CPU-only") || line.contains("CUDA")), "{line}");
    assert!(!text.contains("build-version"), "{text}");
}
