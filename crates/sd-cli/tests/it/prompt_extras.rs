//! Prompt extras through the real `sd` binary: LoRA tags and files, textual-inversion folders, emphasis modes —
//! their errors (exit 1 = runtime problem, 2 = bad flag) and how they are recorded in the A1111 `parameters` chunk.
//! Expected hashes come from fixtures/lora_pipeline/a1111_hashes.json, computed by
//! scripts/fixtures/gen_85_lora_pipeline.py with A1111's algorithms.

use sd_test_support::fixtures;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run sd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked to the user:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn generate(out: &Path, prompt: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
    c.args(["generate", prompt, "--steps", "2", "--dtype", "f32", "--device", "cpu", "-q", "--seed", "1"]);
    c.args(["--width", "64", "--height", "64", "--no-watermark"]);
    c.arg("--model").arg(fixtures().join("models/sd1"));
    c.arg("--lora-dir").arg(fixtures().join("lora_pipeline/lora"));
    c.arg("--output").arg(out.join("{seed}.png"));
    c
}

fn no_png(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).all(|e| e.path().extension().is_none_or(|x| x != "png"))
}

#[test]
fn unknown_lora_tag_lists_the_files_found() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&mut generate(dir.path(), "a cat <lora:nope:0.5>"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nope") && err.contains("tiny-kohya.safetensors"), "{err}");
    assert!(no_png(dir.path()));
}

#[test]
fn lora_for_another_architecture_names_the_first_mismatched_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl-style.safetensors");
    let t = |shape: &[i64]| tch::Tensor::ones(shape, (tch::Kind::Float, tch::Device::Cpu));
    let tensors = vec![
        ("lora_unet_input_blocks_4_1_proj_in.lora_down.weight".to_string(), t(&[4, 640])),
        ("lora_unet_input_blocks_4_1_proj_in.lora_up.weight".to_string(), t(&[640, 4])),
    ];
    tch::Tensor::write_safetensors(&tensors, &path).unwrap();
    let (code, err) = run(generate(dir.path(), "a cat").arg("--lora").arg(format!("{}:0.7", path.display())));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("input_blocks_4_1_proj_in") && err.contains("sdxl-style.safetensors"), "{err}");
    assert!(no_png(dir.path()));
}

#[test]
fn bad_flags_and_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(generate(dir.path(), "a cat").args(["--emphasis", "bogus"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bogus") && err.contains("no-norm"), "{err}");
    let (code, err) = run(generate(dir.path(), "a cat").arg("--embeddings-dir").arg(dir.path().join("missing")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing") && err.contains("embeddings"), "{err}");
    let (code, err) = run(generate(dir.path(), "a cat").arg("--lora").arg(dir.path().join("absent.safetensors")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("absent.safetensors"), "{err}");
    assert!(no_png(dir.path()));
}

#[test]
fn parameters_record_lora_ti_and_emphasis_as_a1111() {
    let hashes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora_pipeline/a1111_hashes.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompt = "a (tiny-style:1.2) circle <lora:tiny-kohya:0.8>";
    let mut cmd = generate(dir.path(), prompt);
    cmd.args(["--emphasis", "no-norm"]).arg("--embeddings-dir").arg(fixtures().join("prompt/embeddings_sd1"));
    let (code, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&std::fs::read(dir.path().join("1.png")).unwrap()).to_string();
    let lora = format!("Lora hashes: \"tiny-kohya: {}\"", hashes["lora"]["tiny-kohya"].as_str().unwrap());
    let ti = format!("TI hashes: \"tiny-style: {}\"", hashes["ti"]["tiny-style"].as_str().unwrap());
    for want in [prompt, lora.as_str(), ti.as_str(), "Emphasis: No norm"] {
        assert!(text.contains(want), "parameters lack `{want}`");
    }

    // Original emphasis, no embedding and no LoRA used: none of the three keys.
    let plain = tempfile::tempdir().unwrap();
    let mut cmd = generate(plain.path(), "a (red:1.2) circle");
    cmd.arg("--embeddings-dir").arg(fixtures().join("prompt/embeddings_sd1"));
    let (code, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&std::fs::read(plain.path().join("1.png")).unwrap()).to_string();
    for absent in ["Lora hashes", "TI hashes", "Emphasis:"] {
        assert!(!text.contains(absent), "parameters should not contain `{absent}`");
    }
}
