//! The tests that set process-wide environment variables, kept out of the shared `it` binary (where other tests
//! read the environment, LibTorch included) and serialised here by one lock: repo ids resolved offline in the
//! Hugging Face hub cache (HF_HUB_CACHE, HF_HOME, HOME), and the randn kernel chosen by ATEN_CPU_CAPABILITY.

use sd_core::model_dir::{hf_cache_roots, ModelDir};
use sd_core::{NormalKernel, TorchGenerator};
use std::path::Path;
use std::sync::Mutex;

static ENV: Mutex<()> = Mutex::new(());

fn snapshot(cache: &Path, repo: &str, rev: &str, class: &str) {
    let snap = cache.join(format!("models--{}", repo.replace('/', "--"))).join("snapshots").join(rev);
    std::fs::create_dir_all(snap.join("unet")).unwrap();
    std::fs::write(
        snap.join("model_index.json"),
        format!(r#"{{"_class_name": "{class}", "unet": ["diffusers", "UNet2DConditionModel"]}}"#),
    )
    .unwrap();
}

#[test]
fn hf_cache_layout() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let hub = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", hub.path());
    std::env::remove_var("HF_HOME");
    std::env::set_var("HOME", home.path());
    assert_eq!(hf_cache_roots()[0], hub.path());

    // refs/main picks the snapshot even when another one sorts first.
    snapshot(hub.path(), "org/model", "aaaa111", "OldPipeline");
    snapshot(hub.path(), "org/model", "bbbb222", "StableDiffusionPipeline");
    let repo = hub.path().join("models--org--model");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "bbbb222\n").unwrap();
    let md = ModelDir::open("org/model").unwrap();
    assert!(md.root.ends_with("snapshots/bbbb222"), "{}", md.root.display());
    assert_eq!(md.pipeline_class().as_deref(), Some("StableDiffusionPipeline"));
    assert_eq!(md.component_class("unet").as_deref(), Some("UNet2DConditionModel"));
    assert!(md.component_dir("unet").is_ok());

    // Without refs/main (or with a stale one) the first snapshot is used.
    std::fs::write(repo.join("refs/main"), "deleted-rev").unwrap();
    assert!(ModelDir::open("org/model").unwrap().root.ends_with("snapshots/aaaa111"));
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    assert!(ModelDir::open("org/model").unwrap().root.ends_with("snapshots/aaaa111"));

    // HF_HOME/hub and ~/.cache/huggingface/hub are searched too, in that order.
    std::env::remove_var("HF_HUB_CACHE");
    let hf_home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", hf_home.path());
    snapshot(&hf_home.path().join("hub"), "org/other", "cccc333", "StableDiffusionXLPipeline");
    snapshot(&home.path().join(".cache/huggingface/hub"), "org/homemodel", "dddd444", "StableDiffusionPipeline");
    assert_eq!(ModelDir::open("org/other").unwrap().pipeline_class().as_deref(), Some("StableDiffusionXLPipeline"));
    assert!(ModelDir::open("org/homemodel").unwrap().root.ends_with("snapshots/dddd444"));

    // A repo that is nowhere: the message lists where it looked and says nothing is downloaded.
    let err = ModelDir::open("org/absent").unwrap_err().to_string();
    assert!(err.contains("org/absent") && err.contains(&hf_home.path().join("hub").display().to_string()), "{err}");
    assert!(err.contains("never downloads"), "{err}");
    // A path-looking spec that does not exist is not treated as a repo id.
    let err = ModelDir::open("./no/such/folder").unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn kernel_follows_aten_cpu_capability_like_torch() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("ATEN_CPU_CAPABILITY", "default");
    assert_eq!(NormalKernel::from_env(), NormalKernel::Default);
    assert_eq!(TorchGenerator::new(1).kernel(), NormalKernel::Default);
    for other in ["avx2", "AVX512", ""] {
        std::env::set_var("ATEN_CPU_CAPABILITY", other);
        assert_eq!(NormalKernel::from_env(), NormalKernel::Avx2, "{other}");
    }
    std::env::remove_var("ATEN_CPU_CAPABILITY");
    assert_eq!(TorchGenerator::new(1).kernel(), NormalKernel::Avx2);
}
