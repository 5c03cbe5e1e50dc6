//! The T5 tokenizer built from a `spiece.model` alone (fixtures/t5_spiece/, scripts/fixtures/gen_99_sd3_t5_spiece.py:
//! a SentencePiece Unigram model of 300 pieces trained by the `sentencepiece` package with the nmt_nfkc charsmap):
//! ids for 30 prompts (accents, unicode, runs of spaces, tabs and newlines, full-width forms, ligatures, digits,
//! punctuation, unknown scripts, literal special and sentinel tokens, empty, 120 words) exactly equal to
//! transformers' T5Tokenizer loaded from the same folder (`T5TokenizerFast` is that class in transformers 5), plain
//! and padded / truncated as SD3 does; and equal to SentencePiece's own `encode` (transformers 4's slow tokenizer)
//! on every prompt but the four the fixture lists, where SentencePiece reads `</s>`, `<pad>`, `<extra_id_N>` as
//! text instead of special tokens, or breaks a tie between equal-score segmentations of "1,000,000" the other way.

use sd_models::t5::spiece::SentencePieceModel;
use sd_models::t5::T5Tokenizer;
use sd_test_support::fixtures;

fn meta() -> serde_json::Value {
    let p = fixtures().join("t5_spiece/cases.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("gen_99_sd3_t5_spiece.py")).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn spiece_model_tokenizes_as_transformers() {
    let m = meta();
    let dir = fixtures().join("t5_spiece/tokenizer_3");
    assert!(!dir.join("tokenizer.json").exists(), "the fixture folder must hold spiece.model alone");
    let tok = T5Tokenizer::load(&dir).unwrap();
    let max = m["max_length"].as_u64().unwrap() as usize;
    let differs: Vec<&str> =
        m["sentencepiece_differs"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let cases = m["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut same_as_sp = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let plain = tok.encode_plain(text).unwrap();
        assert_eq!(plain, ids(&c["ids"]), "{text:?}");
        assert_eq!(tok.encode(text, max).unwrap(), ids(&c["padded"]), "{text:?} padded");
        if !differs.contains(&text) {
            assert_eq!(plain, ids(&c["sentencepiece"]), "{text:?} against sentencepiece");
            same_as_sp += 1;
        }
    }
    println!("{} prompts equal to transformers; {same_as_sp} also to sentencepiece", cases.len());
}

#[test]
fn spiece_model_reader() {
    let sp = SentencePieceModel::load(&fixtures().join("t5_spiece/tokenizer_3/spiece.model")).unwrap();
    assert_eq!(sp.pieces.len(), 300);
    assert_eq!(
        (sp.pieces[0].piece.as_str(), sp.pieces[1].piece.as_str(), sp.pieces[2].piece.as_str()),
        ("<pad>", "</s>", "<unk>")
    );
    assert!(!sp.precompiled_charsmap.is_empty());
    // a tokenizer.json wins over spiece.model when both are there; neither: an error naming both
    let empty = tempfile::tempdir().unwrap();
    let e = format!("{:#}", T5Tokenizer::load(empty.path()).err().unwrap());
    assert!(e.contains("tokenizer.json or spiece.model"), "{e}");
}
