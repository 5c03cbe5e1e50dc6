//! T5 (SD3's third text encoder) against transformers 5.24.0, from scripts/fixtures/gen_33_t5.py: the Unigram
//! tokenizer's ids (plain, and padded / truncated to SD3's `max_length` with `</s>`), and T5EncoderModel's last
//! hidden state for those ids and for 40-token sequences that reach the logarithmic and the last relative-position
//! buckets. Tolerance 1e-4 absolute in f32 (measured worst 3.2e-6 on outputs up to 5.5; transformers ran SDPA as
//! here).

use sd_core::weights::SafeTensorsFiles;
use sd_models::t5::encoder::relative_position_bucket;
use sd_models::t5::{T5EncoderModel, T5Tokenizer};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/t5");

fn meta() -> serde_json::Value {
    let p = Path::new(DIR).join("cases.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (gen_33_t5.py)", p.display())))
        .unwrap()
}

fn tensors() -> SafeTensorsFiles {
    SafeTensorsFiles::open(&[Path::new(DIR).join("cases.safetensors")]).expect("cases.safetensors")
}

#[test]
fn tokenizer_ids_match_transformers() {
    let m = meta();
    let tok = T5Tokenizer::load(&Path::new(DIR).join("tokenizer_3")).unwrap();
    let ids = tensors().load("ids").unwrap();
    let max_len = m["max_length"].as_u64().unwrap() as usize;
    for (i, p) in m["prompts"].as_array().unwrap().iter().enumerate() {
        let p = p.as_str().unwrap();
        let want_plain: Vec<u32> =
            m["plain_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode_plain(p).unwrap(), want_plain, "{p:?}");
        let want: Vec<i64> = Vec::try_from(ids.get(i as i64)).unwrap();
        let got: Vec<i64> = tok.encode(p, max_len).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(got, want, "{p:?}");
    }
    assert!(tok.encode("x", 0).is_err() && tok.encode("x", 100_000).is_err());
}

#[test]
fn encoder_matches_transformers() {
    let model = T5EncoderModel::load(&Path::new(DIR).join("text_encoder_3"), Kind::Float, Device::Cpu).unwrap();
    let t = tensors();
    for (ids, out) in [("ids", "out"), ("long_ids", "out_long")] {
        let got = model.forward(&t.load(ids).unwrap()).unwrap();
        let want = t.load(out).unwrap();
        assert_eq!(got.size(), want.size());
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        println!("{ids}: max|out| {scale:.3} max abs err {err:.2e}");
        assert!(scale > 0.1 && err <= 1e-4, "{ids}: err {err} (scale {scale})");
    }
    // bf16: as close to transformers' bf16 run as that run is to f32 (random T5 weights without attention scaling
    // make sharp softmaxes, so bf16 rounding alone moves the output by tenths)
    let bf = T5EncoderModel::load(&Path::new(DIR).join("text_encoder_3"), Kind::BFloat16, Device::Cpu).unwrap();
    let got = bf.forward(&t.load("ids").unwrap()).unwrap();
    assert_eq!(got.kind(), Kind::BFloat16);
    let reference = t.load("out_bf16").unwrap();
    let err = (got.to_kind(Kind::Float) - &reference).abs().max().double_value(&[]);
    let spread = (&reference - t.load("out").unwrap()).abs().max().double_value(&[]);
    println!("bf16: max abs err vs transformers bf16 {err:.3e}, transformers bf16 vs f32 {spread:.3e}");
    assert!(err <= spread.max(0.05), "bf16 off by {err} (reference bf16 spread {spread})");
    assert!(model.forward(&Tensor::zeros([3], (Kind::Int64, Device::Cpu))).is_err());
    let e = format!("{:#}", model.forward(&Tensor::from_slice(&[1i64, 100_000]).view([1, 2])).unwrap_err());
    assert!(e.contains("vocabulary"), "{e}");
}

/// T5's bidirectional buckets (32 buckets, max distance 128, as T5-XXL): values from transformers'
/// `_relative_position_bucket`.
#[test]
fn relative_position_buckets() {
    let want = [(0, 0), (1, 17), (-1, 1), (7, 23), (8, 24), (-8, 8), (20, 26), (-100, 15), (127, 31), (500, 31)];
    for (rel, b) in want {
        assert_eq!(relative_position_bucket(rel, 32, 128), b, "relative position {rel}");
    }
}
