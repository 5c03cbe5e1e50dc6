//! Chunk token ids and multipliers, exactly as the A1111 re-implementation in scripts/fixtures/gen_70_prompt.py
//! gives them on the tiny fixture tokenizers (exact comparison: ids are integers, multipliers are the same f64
//! products rounded to f32).

use sd_core::weights::SafeTensorsFiles;
use sd_models::clip::ClipTokenizer;
use sd_pipeline::prompt::chunks::{tokenize_line, ChunkIds, NoEmbeddings};
use sd_pipeline::prompt::encoder::comma_id;
use sd_pipeline::prompt::parser::parse_prompt_attention_f64;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures")).to_path_buf()
}

fn cases() -> serde_json::Value {
    let path = fixtures().join("prompt/cases.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run gen_70_prompt.py)", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn chunks_match_reference() {
    let meta = cases();
    let tensors = SafeTensorsFiles::open(&[fixtures().join("prompt/prompt.safetensors")]).unwrap();
    let cases = meta["cases"].as_object().unwrap();
    assert!(cases.len() >= 10);
    for (name, case) in cases {
        let family = case["family"].as_str().unwrap();
        let tok = ClipTokenizer::from_dir(&fixtures().join("models").join(family).join("tokenizer")).unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        let runs = match case["emphasis"].as_str().unwrap() {
            "none" => vec![(prompt.to_string(), 1.0)],
            _ => parse_prompt_attention_f64(prompt),
        };
        let ids = ChunkIds { bos: tok.bos(), eos: tok.eos(), comma: comma_id(|t| tok.encode_raw(t)) };
        let (chunks, _) = tokenize_line(&runs, &mut |t| tok.encode_raw(t), ids, &NoEmbeddings).unwrap();
        let want_tokens = tensors.load(&format!("a1111_{name}_tokens")).unwrap();
        let want_mults = tensors.load(&format!("a1111_{name}_multipliers")).unwrap();
        assert_eq!(want_tokens.size(), vec![chunks.len() as i64, 77], "{name}: chunk count");
        for (i, chunk) in chunks.iter().enumerate() {
            let wt: Vec<i64> = Vec::try_from(want_tokens.get(i as i64)).unwrap();
            let got: Vec<i64> = chunk.tokens.iter().map(|&t| t as i64).collect();
            assert_eq!(got, wt, "{name}: chunk {i} tokens");
            let wm: Vec<f32> = Vec::try_from(want_mults.get(i as i64)).unwrap();
            assert_eq!(chunk.multipliers, wm, "{name}: chunk {i} multipliers");
        }
    }
}

/// The long prompt's first chunk ends at its comma (back-tracking fired) and continues in the second chunk.
#[test]
fn long_prompt_backtracks_at_comma() {
    let meta = cases();
    let prompt = meta["cases"]["sd1_long_comma"]["prompt"].as_str().unwrap();
    let tok = ClipTokenizer::from_dir(&fixtures().join("models/sd1/tokenizer")).unwrap();
    let comma = comma_id(|t| tok.encode_raw(t)).unwrap();
    let ids = ChunkIds { bos: tok.bos(), eos: tok.eos(), comma: Some(comma) };
    let runs = parse_prompt_attention_f64(prompt);
    let (chunks, _) = tokenize_line(&runs, &mut |t| tok.encode_raw(t), ids, &NoEmbeddings).unwrap();
    assert_eq!(chunks.len(), 2);
    let first_end = chunks[0].tokens[1..].iter().position(|&t| t == tok.eos()).unwrap() + 1;
    assert!(first_end < 76, "the first chunk must close early");
    assert_eq!(chunks[0].tokens[first_end - 1], comma);
}
