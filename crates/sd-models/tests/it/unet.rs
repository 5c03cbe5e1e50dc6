//! UNet2DConditionModel parity with diffusers 0.42.1 (fixtures from scripts/fixtures/gen_30_unet.py), attention
//! modes, bf16, and the errors a user sees for bad configs or mismatched weights.

use sd_core::weights::{SafeTensorsFiles, VarBuilder};
use sd_models::attention::{attention, AttentionMode};
use sd_models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
use sd_test_support::max_abs_diff;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

struct Case {
    name: String,
    model: PathBuf,
    tensors: SafeTensorsFiles,
}

impl Case {
    fn get(&self, name: &str) -> Option<Tensor> {
        self.tensors.entry(name).map(|_| self.tensors.load(name).expect("fixture tensor"))
    }
    fn must(&self, name: &str) -> Tensor {
        self.get(name).unwrap_or_else(|| panic!("fixture {} lacks `{name}`", self.name))
    }
}

fn cases() -> Vec<Case> {
    let index = Path::new(FIXTURES).join("unet/cases.json");
    let text = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fixtures/gen_30_unet.py)", index.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json");
    json["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            model: Path::new(FIXTURES).join(c["model"].as_str().expect("model")),
            tensors: SafeTensorsFiles::open(&[Path::new(FIXTURES).join(c["tensors"].as_str().expect("tensors"))])
                .expect("open case"),
        })
        .collect()
}

fn run(unet: &UNet2DConditionModel, case: &Case, kind: Kind) -> Tensor {
    let to = |t: Tensor| t.to_kind(kind);
    let added = case.get("text_embeds").map(|te| AddedCond { text_embeds: to(te), time_ids: case.must("time_ids") });
    let cond = case.get("timestep_cond").map(to);
    unet.forward(
        &to(case.must("sample")),
        &case.must("timestep"),
        &to(case.must("encoder_hidden_states")),
        added.as_ref(),
        cond.as_ref(),
    )
    .unwrap_or_else(|e| panic!("{}: forward failed: {e:#}", case.name))
    .to_kind(Kind::Float)
}

#[test]
fn f32_matches_diffusers_for_every_case() {
    let all = cases();
    assert!(all.len() >= 12, "expected at least 12 cases, found {}", all.len());
    for case in &all {
        let unet = UNet2DConditionModel::load(&case.model, Kind::Float, Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        let expected = case.must("out");
        let got = run(&unet, case, Kind::Float);
        let err = max_abs_diff(&got, &expected);
        let scale = expected.abs().max().double_value(&[]);
        println!("{:16} max|out| {scale:8.4}  max abs err {err:.2e}", case.name);
        assert!(scale > 0.1, "{}: reference output is degenerate", case.name);
        assert!(err <= 1e-4, "{}: max abs error {err} > 1e-4", case.name);
    }
}

#[test]
fn sliced_attention_modes_equal_sdpa() {
    for case in cases().iter().filter(|c| ["sd1_vec", "sdxl_vec", "deep3_vec"].contains(&c.name.as_str())) {
        let mut unet = UNet2DConditionModel::load(&case.model, Kind::Float, Device::Cpu).expect("load");
        let sdpa = run(&unet, case, Kind::Float);
        for mode in [AttentionMode::SliceHeads(1), AttentionMode::SliceHeads(3), AttentionMode::SliceQueries(5)] {
            unet.set_attention_mode(mode);
            let err = max_abs_diff(&run(&unet, case, Kind::Float), &sdpa);
            assert!(err <= 1e-5, "{} {mode:?}: differs from SDPA by {err}", case.name);
        }
    }
    // The function itself, with uneven slices, cross-attention lengths and upcasting from bf16.
    tch::manual_seed(7);
    let q = Tensor::randn([2, 3, 10, 4], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([2, 3, 6, 4], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([2, 3, 6, 4], (Kind::Float, Device::Cpu));
    let reference = attention(&q, &k, &v, None, false, AttentionMode::Sdpa).expect("sdpa");
    for mode in [AttentionMode::SliceHeads(4), AttentionMode::SliceQueries(3)] {
        let err = max_abs_diff(&attention(&q, &k, &v, None, false, mode).expect("sliced"), &reference);
        assert!(err <= 1e-5, "{mode:?}: {err}");
    }
    let bf = |t: &Tensor| t.to_kind(Kind::BFloat16);
    let up = attention(&bf(&q), &bf(&k), &bf(&v), None, true, AttentionMode::SliceHeads(2)).expect("upcast");
    assert_eq!(up.kind(), Kind::BFloat16);
    let err = max_abs_diff(&up.to_kind(Kind::Float), &reference);
    assert!(err <= 0.05, "upcast bf16 attention off by {err}");
}

#[test]
fn channels_last_matches_diffusers_too() {
    // Same weights in NHWC layout: oneDNN picks other kernels, so rounding may differ; same bound as the f32 parity.
    for case in cases()
        .iter()
        .filter(|c| ["sd1_vec", "sd1_odd", "sdxl_vec", "sd1-inpaint_vec", "deep3_odd"].contains(&c.name.as_str()))
    {
        let unet =
            UNet2DConditionModel::load_with(&case.model, Kind::Float, Device::Cpu, true).expect("load channels-last");
        let got = run(&unet, case, Kind::Float);
        assert!(got.is_contiguous(), "{}: output must come back in the usual layout", case.name);
        let err = max_abs_diff(&got, &case.must("out"));
        println!("{:16} channels-last max abs err {err:.2e}", case.name);
        assert!(err <= 1e-4, "{}: channels-last max abs error {err} > 1e-4", case.name);
    }
}

/// The SD1/SD2 fixture UNets loaded in bf16, run with `mode` (or the default), against the f32 diffusers outputs.
/// bf16 keeps 8 mantissa bits (~4e-3 relative); through ~40 layers the tiny UNet stays within 5% of the output
/// range. Tolerance: max abs error ≤ 0.05 · max|reference|.
fn assert_bf16_close_to_f32_reference(mode: Option<AttentionMode>, label: &str) {
    for case in cases().iter().filter(|c| c.name == "sd1_vec" || c.name == "sd2_vec") {
        let mut unet = UNet2DConditionModel::load(&case.model, Kind::BFloat16, Device::Cpu).expect("load bf16");
        if let Some(mode) = mode {
            unet.set_attention_mode(mode);
        }
        let expected = case.must("out");
        let got = run(&unet, case, Kind::BFloat16);
        let scale = expected.abs().max().double_value(&[]);
        let err = max_abs_diff(&got, &expected);
        println!("{} {label}: max abs err {err:.3e} (max|ref| {scale:.3})", case.name);
        assert!(err <= 0.05 * scale, "{}: {label} error {err} > 5% of {scale}", case.name);
    }
}

#[test]
fn bf16_sd1_is_close_to_f32_reference() {
    assert_bf16_close_to_f32_reference(None, "bf16");
}

/// The fused bf16 CPU attention kernel inside a whole UNet, same bound. Without AVX-512 BF16 the mode falls back to
/// SDPA (printed).
#[test]
fn bf16_fused_attention_unet_is_close_to_f32_reference() {
    let fused = sd_models::attention::fused_kernel_available();
    println!("fused kernel {}", if fused { "active" } else { "unavailable: SDPA fallback" });
    assert_bf16_close_to_f32_reference(Some(AttentionMode::Fused), "bf16 fused");
}

/// The bf16 channels-last UNet `sd generate` runs on the CPU, built with weights packed for oneDNN and with the
/// plain LibTorch kernels from the same files: packing moves no number, and the feed-forward's fused
/// GELU rounds once instead of twice. The packed model must stay within the bf16 bound against diffusers' f32
/// output, and the two within 2.5% of that output's range of each other (measured 1.2–1.7%: one or two bf16
/// steps at the output's magnitude, the size of either one's distance from f32). SD1 has 1×1-convolution
/// projections, SD2 and SDXL linear ones.
#[test]
fn packed_bf16_unet_matches_the_plain_kernels() {
    for case in cases().iter().filter(|c| ["sd1_vec", "sd2_vec", "sdxl_vec"].contains(&c.name.as_str())) {
        let build = |packing: bool| {
            let cfg = UNetConfig::from_file(&case.model.join("config.json")).expect("config");
            let weights = sd_core::model_dir::find_weights(&case.model, None).expect("weights");
            let vb = VarBuilder::from_safetensors(&[weights], Kind::BFloat16, Device::Cpu)
                .and_then(|vb| vb.with_channels_last(true))
                .and_then(|vb| vb.with_packing(packing))
                .expect("builder");
            // Built inside a capture, as the pipeline loader builds it (for `--offload`): a packed layer must not
            // leave its plain weight behind in the capture, which would keep a second copy of the model alive.
            let (unet, captured) = sd_core::weights::capture(|| {
                let unet = UNet2DConditionModel::from_varbuilder(&vb, &cfg)?;
                vb.finish("UNet2DConditionModel", &[])?;
                Ok(unet)
            })
            .expect("build");
            let kept_weights = captured.tensors().iter().filter(|t| t.dim() >= 2).count();
            (unet, kept_weights)
        };
        let ((packed, packed_kept), (plain, plain_kept)) = (build(true), build(false));
        assert!(plain_kept > 0, "{}: the plain model's weights are captured", case.name);
        if packed.has_packed_weights() {
            assert_eq!(packed_kept, 0, "{}: packed layers must drop their plain weights from the capture", case.name);
        }
        assert!(!plain.has_packed_weights());
        assert_eq!(packed.has_packed_weights(), sd_core::onednn::supported(), "{}: packing where supported", case.name);
        let expected = case.must("out");
        let scale = expected.abs().max().double_value(&[]);
        let (got_packed, got_plain) = (run(&packed, case, Kind::BFloat16), run(&plain, case, Kind::BFloat16));
        let (e_packed, e_plain) = (max_abs_diff(&got_packed, &expected), max_abs_diff(&got_plain, &expected));
        let apart = max_abs_diff(&got_packed, &got_plain);
        println!(
            "{}: packed err {e_packed:.3e}, plain err {e_plain:.3e}, apart {apart:.3e} (max|ref| {scale:.3})",
            case.name
        );
        assert!(e_packed <= 0.05 * scale, "{}: packed error {e_packed} > 5% of {scale}", case.name);
        assert!(apart <= 0.025 * scale, "{}: packed and plain kernels {apart} apart", case.name);
    }
}

#[test]
fn unknown_block_type_names_the_field() {
    let path = Path::new(FIXTURES).join("models/sd1/unet/config.json");
    let mut cfg = UNetConfig::from_file(&path).expect("config");
    cfg.down_block_types[1] = "AttnDownBlock2D".into();
    let vb = VarBuilder::from_init(Kind::Float, Device::Cpu);
    let err = UNet2DConditionModel::from_varbuilder(&vb, &cfg).expect_err("must fail").to_string();
    assert!(err.contains("down_block_types") && err.contains("AttnDownBlock2D"), "{err}");

    let mut cfg = UNetConfig::from_file(&path).expect("config");
    cfg.addition_embed_type = Some("image".into());
    let err = UNet2DConditionModel::from_varbuilder(&vb, &cfg).expect_err("must fail").to_string();
    assert!(err.contains("addition_embed_type") && err.contains("image"), "{err}");

    let mut cfg = UNetConfig::from_file(&path).expect("config");
    cfg.act_fn = "mish".into();
    let err = format!("{:#}", UNet2DConditionModel::from_varbuilder(&vb, &cfg).expect_err("must fail"));
    assert!(err.contains("act_fn") && err.contains("mish"), "{err}");
}

#[test]
fn sd1_weights_with_sdxl_config_lists_tensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(Path::new(FIXTURES).join("models/sdxl/unet/config.json"), dir.path().join("config.json"))
        .expect("copy");
    std::fs::copy(
        Path::new(FIXTURES).join("models/sd1/unet/diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .expect("copy");
    let err = UNet2DConditionModel::load(dir.path(), Kind::Float, Device::Cpu).expect_err("must fail").to_string();
    // SDXL has add_embedding and a second transformer layer that SD1 lacks; SD1's cross-attention keys are narrower.
    assert!(err.contains("missing tensor `add_embedding.linear_1.weight`"), "{err}");
    assert!(err.contains("down_blocks.1.attentions.0.transformer_blocks.1."), "{err}");
    assert!(err.contains("attn2.to_k.weight` has shape"), "{err}");
    assert!(err.starts_with("cannot load UNet2DConditionModel from"), "{err}");

    // The other way round, SDXL's extra tensors are reported as unused.
    std::fs::copy(Path::new(FIXTURES).join("models/sd1/unet/config.json"), dir.path().join("config.json"))
        .expect("copy");
    std::fs::copy(
        Path::new(FIXTURES).join("models/sdxl/unet/diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .expect("copy");
    let err = UNet2DConditionModel::load(dir.path(), Kind::Float, Device::Cpu).expect_err("must fail").to_string();
    assert!(err.contains("not used by the model") && err.contains("add_embedding.linear_1.weight"), "{err}");
}

#[test]
fn from_init_builds_and_runs_a_fresh_model() {
    tch::manual_seed(1);
    let cfg = UNetConfig::from_file(&Path::new(FIXTURES).join("models/sdxl/unet/config.json")).expect("config");
    let vb = VarBuilder::from_init(Kind::Float, Device::Cpu);
    let unet = UNet2DConditionModel::from_varbuilder(&vb, &cfg).expect("build");
    vb.finish("fresh UNet", &[]).expect("no problems");
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let ctx = Tensor::randn([1, 5, 32], (Kind::Float, Device::Cpu));
    let added = AddedCond {
        text_embeds: Tensor::randn([1, 16], (Kind::Float, Device::Cpu)),
        time_ids: Tensor::ones([1, 6], (Kind::Float, Device::Cpu)),
    };
    let out = unet.forward(&x, &Tensor::from(10.0f32), &ctx, Some(&added), None).expect("forward");
    assert_eq!(out.size(), vec![1, 4, 8, 8]);
    // Differentiable end to end (training backpropagates through forward).
    out.sum(Kind::Float).backward();
    assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // SDXL without its added conditioning is a clear error.
    let err = unet.forward(&x, &Tensor::from(10.0f32), &ctx, None, None).expect_err("needs added cond").to_string();
    assert!(err.contains("text_embeds"), "{err}");
    // Wrong widths are errors, not LibTorch panics.
    let bad_ctx = Tensor::randn([1, 5, 16], (Kind::Float, Device::Cpu));
    let err = unet.forward(&x, &Tensor::from(10.0f32), &bad_ctx, Some(&added), None).expect_err("bad ctx").to_string();
    assert!(err.contains("encoder_hidden_states") && err.contains("32"), "{err}");
    let bad_added = AddedCond {
        text_embeds: Tensor::randn([1, 20], (Kind::Float, Device::Cpu)),
        time_ids: Tensor::ones([1, 6], (Kind::Float, Device::Cpu)),
    };
    let err =
        unet.forward(&x, &Tensor::from(10.0f32), &ctx, Some(&bad_added), None).expect_err("bad added").to_string();
    assert!(err.contains("text_embeds [1, 16]"), "{err}");
}

/// Winograd F(2×2, 3×3) in a UNet's 128–640-channel 3×3 layers (bf16, CPU with AVX-512 BF16): on a random UNet wide
/// enough to use it (the committed fixtures are too narrow), one prediction must stay as close to the f32 prediction
/// of the same weights as the direct bf16 kernels do, within a factor: mean |Δ| ≤ 2× and max |Δ| ≤ 3× theirs.
#[test]
fn winograd_prediction_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(sd_test_support::fixtures().join("models/sd1/unet/config.json")).unwrap();
    let start = text.find("\"block_out_channels\"").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let text = format!("{}\"block_out_channels\": [128, 128]{}", &text[..start], &text[end..]);
    let text = text.replace("\"norm_num_groups\": 4,", "\"norm_num_groups\": 32,");
    assert!(text.contains("[128, 128]") && text.contains("\"norm_num_groups\": 32"));
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let cfg = UNetConfig::from_file(&dir.path().join("config.json")).unwrap();

    tch::manual_seed(31);
    let vs = std::sync::Arc::new(tch::nn::VarStore::new(Device::Cpu));
    let init = VarBuilder::from_init(Kind::Float, Device::Cpu).trainable(vs.clone()).unwrap();
    UNet2DConditionModel::from_varbuilder(&init, &cfg).unwrap();
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
    let build = |kind: Kind, winograd: bool| {
        let tensors = weights.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
        let vb = VarBuilder::from_tensors(tensors, "random", kind, Device::Cpu)
            .with_channels_last(kind == Kind::BFloat16)
            .unwrap()
            .with_winograd(winograd)
            .unwrap();
        let uses = vb.uses_winograd();
        (UNet2DConditionModel::from_varbuilder(&vb, &cfg).unwrap(), uses)
    };
    let (direct, _) = build(Kind::BFloat16, false);
    let (wino, uses) = build(Kind::BFloat16, true);
    if !uses {
        assert!(!sd_core::winograd::available(), "Winograd must be used where the CPU runs it");
        return;
    }
    let (f32_unet, _) = build(Kind::Float, false);
    let x = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
    let ctx = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from(500.0f32);
    let _no_grad = tch::no_grad_guard();
    let reference = f32_unet.forward(&x, &t, &ctx, None, None).unwrap();
    let errors = |unet: &UNet2DConditionModel| {
        let y = unet.forward(&x.to_kind(Kind::BFloat16), &t, &ctx.to_kind(Kind::BFloat16), None, None).unwrap();
        let d = (y.to_kind(Kind::Float) - &reference).abs();
        (d.mean(Kind::Float).double_value(&[]), d.max().double_value(&[]))
    };
    let ((wmean, wmax), (dmean, dmax)) = (errors(&wino), errors(&direct));
    println!("Winograd mean {wmean:.3e} max {wmax:.3e}; direct mean {dmean:.3e} max {dmax:.3e}");
    assert!(wmean > 0.0 && (wmean, wmax) != (dmean, dmax), "the Winograd layers must be in use");
    assert!(wmean <= 2.0 * dmean && wmax <= 3.0 * dmax, "Winograd error beyond its bound");
}
