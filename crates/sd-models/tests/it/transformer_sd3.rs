//! SD3Transformer2DModel parity with diffusers 0.42.1 (fixtures from scripts/fixtures/gen_32_transformer_sd3.py:
//! tiny SD3-like and SD3.5-Medium-like MMDiTs with qk RMS norm and dual attention, non-square latents cropping the
//! positional grid, skipped layers), and the errors for bad inputs. Tolerance: 1e-4 absolute in f32; measured
//! worst 8.6e-7 (outputs up to 6.0), three of the four cases bit-identical.

use sd_core::weights::SafeTensorsFiles;
use sd_models::attention::{fused_kernel_available, AttentionMode};
use sd_models::transformer_sd3::SD3Transformer2DModel;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn cases() -> Vec<serde_json::Value> {
    let index = Path::new(FIXTURES).join("transformer_sd3/cases.json");
    let text = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fixtures/gen_32_transformer_sd3.py)", index.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json");
    json["cases"].as_array().expect("cases").clone()
}

fn load(c: &serde_json::Value) -> (SD3Transformer2DModel, SafeTensorsFiles) {
    let model =
        SD3Transformer2DModel::load(&Path::new(FIXTURES).join(c["model"].as_str().unwrap()), Kind::Float, Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e:#}", c["name"]));
    let t = SafeTensorsFiles::open(&[Path::new(FIXTURES).join(c["tensors"].as_str().unwrap())]).expect("case");
    (model, t)
}

fn run(model: &SD3Transformer2DModel, t: &SafeTensorsFiles, skip: &[usize], kind: Kind) -> anyhow::Result<Tensor> {
    let get = |n: &str| t.load(n).expect("fixture tensor").to_kind(kind);
    model.forward(
        &get("hidden_states"),
        &t.load("timestep").unwrap(),
        &get("encoder_hidden_states"),
        &get("pooled_projections"),
        skip,
    )
}

#[test]
fn f32_matches_diffusers_for_every_case() {
    let all = cases();
    assert_eq!(all.len(), 4);
    for c in &all {
        let (model, t) = load(c);
        let skip: Vec<usize> =
            c["skip_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let got = run(&model, &t, &skip, Kind::Float).unwrap_or_else(|e| panic!("{}: {e:#}", c["name"]));
        let want = t.load("out").unwrap();
        assert_eq!(got.size(), want.size(), "{}", c["name"]);
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        println!("{:12} max|out| {scale:8.4}  max abs err {err:.2e}", c["name"].as_str().unwrap());
        assert!(scale > 0.1, "{}: degenerate reference", c["name"]);
        assert!(err <= 1e-4, "{}: max abs error {err} > 1e-4", c["name"]);
        if !skip.is_empty() {
            // skipping must change the output (the fixture's layers are not identities)
            let full = run(&model, &t, &[], Kind::Float).unwrap();
            assert!((&full - &want).abs().max().double_value(&[]) > 1e-3, "{}: skip_layers had no effect", c["name"]);
        }
    }
}

#[test]
fn bf16_stays_close_to_f32() {
    for c in cases().iter().take(3) {
        let (model, t) = load(c);
        let mut bf = SD3Transformer2DModel::load(
            &Path::new(FIXTURES).join(c["model"].as_str().unwrap()),
            Kind::BFloat16,
            Device::Cpu,
        )
        .unwrap();
        let a = run(&model, &t, &[], Kind::Float).unwrap();
        let scale = a.abs().max().double_value(&[]);
        let mut errs = Vec::new();
        let mut outs = Vec::new();
        // SDPA (the model's default), then the crate's fused kernel (what `Auto` picks for SD3's joint attention
        // on AVX-512 BF16 CPUs without AMX; SDPA where the kernel cannot run)
        for mode in [AttentionMode::Sdpa, AttentionMode::Fused] {
            bf.set_attention_mode(mode);
            let b = run(&bf, &t, &[], Kind::BFloat16).unwrap();
            assert_eq!(b.kind(), Kind::BFloat16);
            let err = (&a - b.to_kind(Kind::Float)).abs().max().double_value(&[]);
            println!(
                "{:12} {mode:?}: bf16 max abs err {err:.2e} (fused kernel: {})",
                c["name"],
                fused_kernel_available()
            );
            assert!(err <= 0.05 * scale.max(1.0), "{} {mode:?}: bf16 off by {err} (scale {scale})", c["name"]);
            errs.push(err);
            outs.push(b.to_kind(Kind::Float));
        }
        let apart = (&outs[0] - &outs[1]).abs().max().double_value(&[]);
        println!("{:12} fused vs SDPA in bf16: max abs {apart:.2e}", c["name"]);
        // the fused kernel adds no error of its own beyond bf16's
        assert!(
            errs[1] <= 1.5 * errs[0] + 1e-2 * scale.max(1.0),
            "{}: fused {} vs SDPA {}",
            c["name"],
            errs[1],
            errs[0]
        );
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let c = &cases()[0];
    let (model, t) = load(c);
    let x = t.load("hidden_states").unwrap();
    let e = t.load("encoder_hidden_states").unwrap();
    let p = t.load("pooled_projections").unwrap();
    let ts = t.load("timestep").unwrap();
    let big = Tensor::zeros([2, 16, 18, 8], (Kind::Float, Device::Cpu));
    let msg = format!("{:#}", model.forward(&big, &ts, &e, &p, &[]).unwrap_err());
    assert!(msg.contains("pos_embed_max_size"), "{msg}");
    let odd = Tensor::zeros([2, 16, 7, 8], (Kind::Float, Device::Cpu));
    let msg = format!("{:#}", model.forward(&odd, &ts, &e, &p, &[]).unwrap_err());
    assert!(msg.contains("patch size"), "{msg}");
    let msg = format!("{:#}", model.forward(&x, &ts, &e.narrow(2, 0, 5), &p, &[]).unwrap_err());
    assert!(msg.contains("text states"), "{msg}");
    let msg = format!("{:#}", model.forward(&x.narrow(1, 0, 4), &ts, &e, &p, &[]).unwrap_err());
    assert!(msg.contains("latents"), "{msg}");
    let msg = format!("{:#}", model.forward(&x, &ts.narrow(0, 0, 1), &e, &p, &[]).unwrap_err());
    assert!(msg.contains("timestep"), "{msg}");
}
