//! `sd tokenize` end to end: ids equal transformers' (fixtures/clip/tokens.json), usage errors exit with 2.

use sd_test_support::fixtures;
use std::process::Command;

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("clip/tokens.json")).unwrap()).unwrap()
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).arg("tokenize").arg("--json").args(args).output().unwrap();
    assert!(out.status.success(), "sd tokenize failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn default_vocab_matches_transformers() {
    let bpe = sd_models::clip::ClipTokenizer::default_bpe_path();
    assert!(bpe.is_file(), "the CLIP BPE file is missing at {} (run `cargo xtask setup`)", bpe.display());
    let r = reference();
    for i in [3usize, 12, 32] {
        let prompt = r["prompts"][i].as_str().unwrap();
        let v = run_json(&[prompt]);
        assert_eq!(v["ids"], r["full_pad_eot"][i]["ids"], "prompt {i}");
        assert_eq!(v["count"].as_u64().unwrap() as usize, r["full_pad_eot"][i]["raw"].as_array().unwrap().len());
        assert_eq!(v["usable"], 75);
        assert_eq!(v["truncated"].as_bool().unwrap(), v["count"].as_u64().unwrap() > 75);
    }
}

#[test]
fn model_folder_tokenizer_matches_transformers() {
    let r = reference();
    let model = fixtures().join("models/sd2");
    let prompt = r["prompts"][4].as_str().unwrap();
    let v = run_json(&["--model", model.to_str().unwrap(), prompt]);
    assert_eq!(v["ids"], r["tiny_sd2"][4]["ids"]);
    assert_eq!(v["pad"], 0);
}

#[test]
fn second_without_model_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sd")).args(["tokenize", "--second", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--second needs --model"));
}
