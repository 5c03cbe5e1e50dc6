//! Packed oneDNN kernels (`sd_core::onednn`) against LibTorch's plain ones and an f32 reference: packing changes
//! only where the weight lives, so a packed convolution or linear layer must equal the plain bf16 one exactly, and
//! a fused activation may differ from the plain two-op sequence only by the bf16 rounding of the intermediate it no
//! longer writes: it must be at least as close to f32 as the plain sequence.

use sd_core::device::CpuFeatures;
use sd_core::layout::to_channels_last;
use sd_core::onednn::{self, Unary};
use tch::{Device, Kind, Tensor};

fn randn(shape: &[i64], scale: f64) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)) * scale
}

fn bf16(t: &Tensor) -> Tensor {
    t.to_kind(Kind::BFloat16)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

/// Whether this CPU runs the packed kernels at all; where it does not, `supported()` must say so.
fn native() -> bool {
    let native = CpuFeatures::detect().native_bf16();
    if !native {
        assert!(!onednn::supported(), "packed kernels must stay off without native bf16");
    }
    native
}

#[test]
fn packed_convolution_equals_the_plain_kernel_and_a_fused_activation_rounds_once() {
    if !native() {
        return;
    }
    tch::manual_seed(7);
    // (in, out, kernel, stride, padding, size): a UNet 3×3, a 1×1 shortcut, a stride-2 downsampler, the 8×8 level.
    for &(ci, co, k, s, p, hw) in
        &[(64, 96, 3, 1, 1, 16), (96, 64, 1, 1, 0, 16), (64, 64, 3, 2, 1, 16), (128, 128, 3, 1, 1, 8)]
    {
        let x32 = to_channels_last(&randn(&[2, ci, hw, hw], 1.0));
        let w32 = to_channels_last(&randn(&[co, ci, k, k], 1.0 / ((ci * k * k) as f64).sqrt()));
        let b32 = randn(&[co], 0.1);
        let (x, w, b) = (bf16(&x32), bf16(&w32), bf16(&b32));
        for sized in [false, true] {
            let size = sized.then_some([2, ci, hw, hw]);
            let packed = onednn::pack_conv_weight(&w, p, s, size).unwrap();
            let plain = x.conv2d(&w, Some(&b), [s], [p], [1], 1);
            let got = onednn::conv(&x, &packed, Some(&b), p, s, Unary::None).unwrap();
            assert_eq!(got.size(), plain.size());
            assert_eq!(max_abs(&got, &plain), 0.0, "packed conv {ci}->{co} k{k} s{s} (sized: {sized})");
            assert!(sd_core::layout::is_channels_last(&got), "a channels-last input gives a channels-last output");

            let reference =
                x.to_kind(Kind::Float).conv2d(&w.to_kind(Kind::Float), Some(&b.to_kind(Kind::Float)), [s], [p], [1], 1);
            let silu = onednn::conv(&x, &packed, Some(&b), p, s, Unary::Silu).unwrap();
            let exact = reference.silu();
            assert!(max_abs(&silu, &exact) <= max_abs(&plain.silu(), &exact) * 1.01 + 1e-6, "fused SiLU");
        }
    }
}

#[test]
fn packed_linear_equals_the_plain_kernel_and_a_fused_activation_rounds_once() {
    if !native() {
        return;
    }
    tch::manual_seed(8);
    // 3-D token inputs as the transformer blocks give them, with and without bias, and a 2-D time embedding.
    for &(shape, inp, out, bias) in
        &[(&[2, 64, 96][..], 96, 160, true), (&[2, 77, 64][..], 64, 96, false), (&[2, 128][..], 128, 256, true)]
    {
        let x = bf16(&randn(shape, 1.0));
        let w = bf16(&randn(&[out, inp], 1.0 / (inp as f64).sqrt()));
        let b = bias.then(|| bf16(&randn(&[out], 0.1)));
        let rows = shape[..shape.len() - 1].iter().product::<i64>();
        for packed in
            [onednn::pack_linear_weight(&w, None).unwrap(), onednn::pack_linear_weight(&w, Some(rows)).unwrap()]
        {
            let plain = x.linear(&w, b.as_ref());
            let got = onednn::linear(&x, &packed, b.as_ref(), Unary::None).unwrap();
            assert_eq!(got.size(), plain.size());
            assert_eq!(max_abs(&got, &plain), 0.0, "packed linear {shape:?} -> {out}");

            let reference = x
                .to_kind(Kind::Float)
                .linear(&w.to_kind(Kind::Float), b.as_ref().map(|b| b.to_kind(Kind::Float)).as_ref());
            let gelu = onednn::linear(&x, &packed, b.as_ref(), Unary::Gelu).unwrap();
            let exact = reference.gelu("none");
            let (e_fused, e_plain) = (max_abs(&gelu, &exact), max_abs(&plain.gelu("none"), &exact));
            assert!(e_fused <= e_plain * 1.01 + 1e-3, "fused GELU {e_fused} vs two ops {e_plain}");
        }
    }
}

#[test]
fn packed_kernels_refuse_what_they_were_not_made_for() {
    if !native() {
        return;
    }
    let w = bf16(&randn(&[8, 4, 3, 3], 0.1));
    let packed = onednn::pack_conv_weight(&w, 1, 1, None).unwrap();
    // An f32 input: a clear error naming what was expected, not a LibTorch backtrace.
    let err = onednn::conv(&randn(&[1, 4, 8, 8], 1.0), &packed, None, 1, 1, Unary::None).unwrap_err().to_string();
    assert!(err.contains("expected a bf16 CPU tensor"), "{err}");
    // A channel count the weight does not have: oneDNN's refusal comes back as an error.
    let err =
        onednn::conv(&bf16(&randn(&[1, 5, 8, 8], 1.0)), &packed, None, 1, 1, Unary::None).unwrap_err().to_string();
    assert!(err.starts_with("oneDNN convolution:"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let err = onednn::pack_linear_weight(&randn(&[4, 4], 1.0), None).unwrap_err().to_string();
    assert!(err.contains("expected a bf16 CPU tensor"), "{err}");
}
