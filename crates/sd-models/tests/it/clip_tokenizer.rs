//! Token ids must equal transformers 5.24 `CLIPTokenizer` exactly (fixtures/clip/tokens.json, made by
//! scripts/fixtures/gen_20_clip.py), for the full 49 408-token vocabulary built from the real BPE file and for
//! the tiny fixture tokenizers.

use sd_models::clip::{vocab, ClipTokenizer, PadToken};
use sd_test_support::fixtures;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn reference() -> Value {
    let path = fixtures().join("clip/tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("tokens.json is JSON")
}

/// The real BPE file; its absence is a setup problem, reported as such.
fn bpe_file() -> PathBuf {
    let p = ClipTokenizer::default_bpe_path();
    assert!(
        p.is_file(),
        "the CLIP BPE file is missing at {} (run `cargo xtask setup`, or set SD_CLIP_VOCAB)",
        p.display()
    );
    p
}

fn ids_of(v: &Value) -> Vec<i64> {
    v.as_array().expect("id list").iter().map(|x| x.as_i64().expect("id")).collect()
}

fn prompts(r: &Value) -> Vec<String> {
    r["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// Compare every prompt's padded and raw ids against one reference variant.
fn check_variant(tok: &ClipTokenizer, r: &Value, variant: &str) {
    let prompts = prompts(r);
    assert!(prompts.len() >= 30);
    for (i, p) in prompts.iter().enumerate() {
        let want = &r[variant][i];
        let got = tok.encode(p).unwrap();
        assert_eq!(got, ids_of(&want["ids"]), "{variant}: padded ids of prompt {i} {p:?}");
        assert_eq!(got.len(), 77);
        let raw: Vec<i64> = tok.encode_raw(p).unwrap().iter().map(|&x| x as i64).collect();
        assert_eq!(raw, ids_of(&want["raw"]), "{variant}: raw ids of prompt {i} {p:?}");
    }
}

#[test]
fn full_vocab_pad_endoftext_matches_transformers() {
    let r = reference();
    let tok = ClipTokenizer::from_bpe_file(&bpe_file(), PadToken::EndOfText).unwrap();
    assert_eq!((tok.bos(), tok.eos(), tok.pad(), tok.max_len()), (49406, 49407, 49407, 77));
    assert_eq!(tok.vocab_size(), 49408);
    check_variant(&tok, &r, "full_pad_eot");
    // Token strings, start and end token included.
    for (i, p) in prompts(&r).iter().enumerate() {
        let mut ids = vec![tok.bos()];
        ids.extend(tok.encode_raw(p).unwrap());
        ids.push(tok.eos());
        let want: Vec<String> =
            r["full_tokens"][i].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
        assert_eq!(tok.tokens(&ids), want, "tokens of prompt {i} {p:?}");
    }
}

#[test]
fn full_vocab_pad_exclamation_matches_transformers() {
    let r = reference();
    let tok = ClipTokenizer::from_bpe_file(&bpe_file(), PadToken::Exclamation).unwrap();
    assert_eq!(tok.pad() as i64, r["pad_ids"]["full_excl"].as_i64().unwrap());
    check_variant(&tok, &r, "full_pad_excl");
}

#[test]
fn long_prompts_keep_the_end_token() {
    let tok = ClipTokenizer::from_bpe_file(&bpe_file(), PadToken::EndOfText).unwrap();
    let ids = tok.encode(&"word ".repeat(200)).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    assert_eq!(ids[76], 49407);
    assert!(ids[1..76].iter().all(|&i| i != 49407));
    assert_eq!(tok.encode_raw(&"word ".repeat(200)).unwrap().len(), 200);
}

/// A hub-style folder (vocab.json + merges.txt, legacy tokenizer_config.json saying pad <|endoftext|> and
/// special_tokens_map.json saying "!"): transformers lets the map win, as SD2 repos rely on.
#[test]
fn legacy_hub_folder_takes_pad_from_special_tokens_map() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let bpe = vocab::from_openai_bpe(&bpe_file()).unwrap();
    let vocab_map: serde_json::Map<String, Value> =
        bpe.vocab.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
    std::fs::write(dir.path().join("vocab.json"), serde_json::to_string(&vocab_map).unwrap()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in &bpe.merges {
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    let config = r#"{"model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let map = r#"{"pad_token": "!", "bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true,
        "rstrip": false, "single_word": false}}"#;
    std::fs::write(dir.path().join("special_tokens_map.json"), map).unwrap();
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.pad() as i64, r["legacy_folder_pad_id"].as_i64().unwrap());
    check_variant(&tok, &r, "full_pad_excl");
}

#[test]
fn tiny_fixture_tokenizers_match_transformers() {
    let r = reference();
    let sd1 = ClipTokenizer::from_dir(&fixtures().join("models/sd1/tokenizer")).unwrap();
    assert_eq!(sd1.pad() as i64, r["pad_ids"]["tiny_sd1"].as_i64().unwrap());
    check_variant(&sd1, &r, "tiny_sd1");
    let sd2 = ClipTokenizer::from_dir(&fixtures().join("models/sd2/tokenizer")).unwrap();
    assert_eq!(sd2.pad() as i64, r["pad_ids"]["tiny_sd2"].as_i64().unwrap());
    check_variant(&sd2, &r, "tiny_sd2");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let err = ClipTokenizer::from_bpe_file(Path::new("/nonexistent/bpe.txt.gz"), PadToken::EndOfText).err().unwrap();
    assert!(format!("{err:#}").contains("/nonexistent/bpe.txt.gz"), "{err:#}");
    let empty = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(empty.path()).err().unwrap();
    assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");
    std::fs::write(empty.path().join("tokenizer.json"), "{not json").unwrap();
    let err = ClipTokenizer::from_dir(empty.path()).err().unwrap();
    assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
}
