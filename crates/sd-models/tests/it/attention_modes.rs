//! The attention backends selectable with `--attention` compute the same function as the reference softmax(q·kᵀ/√d)·v.

use sd_models::attention::{attention, AttentionMode};
use tch::{Device, Kind, Tensor};

/// The textbook formula in f64 (the reference every mode is compared with).
fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (q, k, v) = (q.to_kind(Kind::Double), k.to_kind(Kind::Double), v.to_kind(Kind::Double));
    let d = q.size()[3] as f64;
    (q.matmul(&k.transpose(-1, -2)) / d.sqrt()).softmax(-1, Kind::Double).matmul(&v)
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn inputs(kind: Kind, lq: i64, lk: i64, d: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    let q = Tensor::randn([2, 3, lq, d], opts).to_kind(kind);
    let k = Tensor::randn([2, 3, lk, d], opts).to_kind(kind);
    let v = Tensor::randn([2, 3, lk, d], opts).to_kind(kind);
    (q, k, v)
}

const MODES: [AttentionMode; 7] = [
    AttentionMode::Sdpa,
    AttentionMode::Auto,
    AttentionMode::Fused,
    AttentionMode::Matmul(0),
    AttentionMode::Matmul(7),
    AttentionMode::SliceQueries(5),
    AttentionMode::SliceHeads(2),
];

/// f32: every mode within 1e-5 of the f64 formula (self- and cross-attention shapes, a ragged last chunk).
#[test]
fn f32_modes_match_reference() {
    for (lq, lk, d) in [(64, 64, 40), (50, 77, 16)] {
        let (q, k, v) = inputs(Kind::Float, lq, lk, d);
        let want = reference(&q, &k, &v);
        for mode in MODES {
            let got = attention(&q, &k, &v, None, false, mode).expect("attention");
            assert_eq!(got.size(), [2, 3, lq, d], "{mode:?}");
            let err = max_err(&got, &want);
            assert!(err <= 1e-5, "{mode:?} lq={lq} lk={lk} d={d}: max abs error {err} > 1e-5");
        }
    }
}

/// bf16: unit-variance inputs, compared with the f64 formula on the same (bf16-rounded) inputs. bf16 keeps 8
/// significant bits (relative step 2⁻⁸ ≈ 0.0039) and the scores, probabilities and output are each rounded, so
/// the stated tolerance is 3e-2 absolute on outputs of magnitude ≲ 3; the matmul path must also stay within
/// 2× the fused kernel's own error + 1e-2.
#[test]
fn bf16_modes_match_reference() {
    let (q, k, v) = inputs(Kind::BFloat16, 256, 256, 40);
    let want = reference(&q, &k, &v);
    let sdpa = max_err(&attention(&q, &k, &v, None, false, AttentionMode::Sdpa).expect("sdpa"), &want);
    for mode in MODES {
        let got = attention(&q, &k, &v, None, false, mode).expect("attention");
        assert_eq!(got.kind(), Kind::BFloat16);
        let err = max_err(&got, &want);
        assert!(err <= 3e-2, "{mode:?}: bf16 max abs error {err} > 3e-2");
        assert!(err <= 2.0 * sdpa + 1e-2, "{mode:?}: bf16 error {err} much worse than SDPA's {sdpa}");
    }
}

#[test]
fn modes_parse_from_cli_names() {
    let parse = |s: &str| s.parse::<AttentionMode>();
    assert_eq!(parse("sdpa").expect("sdpa"), AttentionMode::Sdpa);
    assert_eq!(parse("auto").expect("auto"), AttentionMode::Auto);
    assert_eq!(parse("fused").expect("fused"), AttentionMode::Fused);
    assert_eq!(parse("matmul").expect("matmul"), AttentionMode::Matmul(0));
    assert_eq!(parse("matmul:512").expect("matmul:512"), AttentionMode::Matmul(512));
    assert_eq!(parse("sliced").expect("sliced"), AttentionMode::SliceQueries(1024));
    assert_eq!(parse("sliced:64").expect("sliced:64"), AttentionMode::SliceQueries(64));
    for bad in ["flash", "matmul:0", "matmul:x", "sdpa:4", "fused:2", ""] {
        let err = parse(bad).expect_err(bad).to_string();
        assert!(err.contains("attention mode"), "{bad}: {err}");
    }
}

/// Auto resolves to a concrete mode for every SD1.5 attention shape (never to itself).
#[test]
fn auto_resolves_to_a_concrete_mode() {
    for (lq, d) in [(4096, 40), (1024, 80), (256, 160), (64, 160)] {
        for lk in [lq, 77] {
            for kind in [Kind::Float, Kind::BFloat16] {
                assert_ne!(
                    AttentionMode::Auto.resolve(&[2, 8, lq, d], lk, kind, tch::Device::Cpu),
                    AttentionMode::Auto
                );
            }
        }
    }
    let cpu = |lq: i64, lk: i64, kind| AttentionMode::Auto.resolve(&[2, 8, lq, 40], lk, kind, tch::Device::Cpu);
    if amx() {
        // With AMX, LibTorch's SDPA wins at every shape (measured, see `AttentionMode::resolve`).
        for (lq, lk) in [(4096, 4096), (4096, 77), (1024, 1024), (256, 256)] {
            assert_eq!(cpu(lq, lk, Kind::BFloat16), AttentionMode::Sdpa, "{lq}×{lk}");
            assert_eq!(cpu(lq, lk, Kind::Float), AttentionMode::Sdpa, "{lq}×{lk}");
        }
        return;
    }
    // The measured CPU table: bf16 uses batched matmuls except for the 4096-token self-attention; f32 uses SDPA.
    let big = if avx512_bf16() { AttentionMode::Fused } else { AttentionMode::Sdpa };
    assert_eq!(cpu(4096, 4096, Kind::BFloat16), big);
    assert_eq!(cpu(4096, 4096, Kind::Float), AttentionMode::Sdpa);
    assert_eq!(cpu(4096, 77, Kind::BFloat16), AttentionMode::Matmul(1024));
    let mid = if avx512_bf16() { AttentionMode::Fused } else { AttentionMode::Matmul(256) };
    assert_eq!(cpu(1024, 1024, Kind::BFloat16), mid);
    assert_eq!(cpu(256, 256, Kind::BFloat16), AttentionMode::Matmul(1024));
    assert_eq!(cpu(1024, 1024, Kind::Float), AttentionMode::Sdpa);
    assert_eq!(
        AttentionMode::Auto.resolve(&[2, 8, 1024, 40], 1024, Kind::BFloat16, tch::Device::Cuda(0)),
        AttentionMode::Sdpa
    );
}

fn amx() -> bool {
    sd_core::device::CpuFeatures::detect().amx_bf16
}

fn avx512_bf16() -> bool {
    sd_models::attention::fused_kernel_available()
}

/// The fused bf16 kernel against the f64 formula on the same bf16 inputs, for SD1.5's big self-attention, a
/// cross-attention shape, and ragged sizes (queries/keys not multiples of the 48-row / 64-key tiles, odd and large
/// head dims, Dv ≠ D, a non-default scale, non-contiguous q as produced by `Attention::forward`). Tolerance as for
/// the other bf16 modes: max abs error ≤ 3e-2 and ≤ 2× SDPA's own bf16 error + 1e-2. Without AVX-512 BF16 the mode
/// must fall back to SDPA exactly.
#[test]
fn fused_bf16_matches_reference() {
    let fused = avx512_bf16();
    println!("avx512_bf16: {fused} ({})", if fused { "testing the fused kernel" } else { "testing the SDPA fallback" });
    // (batch, heads, lq, lk, d, dv, scale, transposed q)
    type Case = (i64, i64, i64, i64, i64, i64, Option<f64>, bool);
    let cases: [Case; 9] = [
        (2, 8, 4096, 4096, 40, 40, None, true),
        (1, 3, 77, 100, 64, 64, None, false),
        (2, 3, 130, 67, 40, 40, None, false),
        (1, 2, 130, 67, 80, 80, None, true),
        (1, 2, 49, 300, 160, 160, None, false),
        (1, 1, 5, 1, 7, 7, None, false),
        (2, 2, 97, 513, 33, 17, Some(0.3), true),
        (1, 2, 64, 256, 40, 40, Some(-0.2), false),
        (1, 1, 1, 3, 2, 1, None, false),
    ];
    for (b, h, lq, lk, d, dv, scale, transposed) in cases {
        tch::manual_seed(11);
        let opts = (Kind::Float, Device::Cpu);
        let q = if transposed {
            Tensor::randn([b, lq, h, d], opts).to_kind(Kind::BFloat16).transpose(1, 2)
        } else {
            Tensor::randn([b, h, lq, d], opts).to_kind(Kind::BFloat16)
        };
        let k = Tensor::randn([b, h, lk, d], opts).to_kind(Kind::BFloat16);
        let v = Tensor::randn([b, h, lk, dv], opts).to_kind(Kind::BFloat16);
        let s = scale.unwrap_or(1.0 / (d as f64).sqrt());
        let (qd, kd, vd) = (q.to_kind(Kind::Double), k.to_kind(Kind::Double), v.to_kind(Kind::Double));
        let want = (qd.matmul(&kd.transpose(-1, -2)) * s).softmax(-1, Kind::Double).matmul(&vd);
        let sdpa = attention(&q, &k, &v, scale, false, AttentionMode::Sdpa).expect("sdpa");
        let got = attention(&q, &k, &v, scale, false, AttentionMode::Fused).expect("fused");
        assert_eq!(got.size(), [b, h, lq, dv]);
        assert_eq!(got.kind(), Kind::BFloat16);
        let (err, sdpa_err) = (max_err(&got, &want), max_err(&sdpa, &want));
        // Max errors are dominated by the final bf16 rounding of the output (often the same element for both); the
        // mean error and the fused–SDPA gap show that the two paths really differ.
        let mean = |t: &Tensor| (t.to_kind(Kind::Double) - &want).abs().mean(Kind::Double).double_value(&[]);
        println!(
            "[{b},{h},{lq},{d}] x {lk} keys, dv {dv}, scale {s:.3}: max err fused {err:.3e} / sdpa {sdpa_err:.3e}, mean err \
             fused {:.3e} / sdpa {:.3e}, max |fused - sdpa| {:.3e}",
            mean(&got),
            mean(&sdpa),
            max_err(&got, &sdpa)
        );
        if !fused {
            assert_eq!(max_err(&got, &sdpa), 0.0, "without AVX-512 BF16 Fused must be SDPA");
        }
        assert!(err <= 3e-2, "fused bf16 max abs error {err} > 3e-2");
        assert!(err <= 2.0 * sdpa_err + 1e-2, "fused bf16 error {err} much worse than SDPA's {sdpa_err}");
    }
}

/// The fused kernel has no backward, so inputs that require grad take SDPA and gradients still flow.
#[test]
fn fused_falls_back_when_grad_is_required() {
    let (q, k, v) = inputs(Kind::BFloat16, 64, 300, 40);
    let q = q.set_requires_grad(true);
    let out = attention(&q, &k, &v, None, false, AttentionMode::Fused).expect("fused with grad");
    let auto = attention(&q, &k, &v, None, false, AttentionMode::Auto).expect("auto with grad");
    assert!(out.requires_grad() && auto.requires_grad());
    out.to_kind(Kind::Float).sum(Kind::Float).backward();
    let g = q.grad();
    assert!(
        g.defined() && g.to_kind(Kind::Float).abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "no gradient reached q"
    );
}
