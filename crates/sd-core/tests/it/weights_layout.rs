//! Convolution weights loaded channels-last (`VarBuilder::with_channels_last`) must hold exactly the values
//! LibTorch's own `to(dtype)` gives, bit for bit, in channels-last strides, in storage of their own (the map is gone
//! when they are read): for every pair of float kinds, 1×1 and single-channel kernels, unaligned data (the
//! fall-back copy) and in-memory sources (the re-layout path).

use sd_core::atomic::Overwrite;
use sd_core::layout::is_channels_last;
use sd_core::weights::{save_safetensors, VarBuilder};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const SHAPES: [[i64; 4]; 5] = [[5, 7, 3, 3], [4, 6, 1, 1], [3, 1, 3, 3], [2, 3, 2, 5], [64, 32, 3, 3]];

/// Random values spread over many binades, with the awkward ones mixed in: ±0, ±inf, NaN, subnormals, values far
/// outside f16's range, and f32 values exactly halfway between two bf16 values (round-to-nearest-even ties).
fn values(shape: [i64; 4], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let n: i64 = shape.iter().product();
    let t =
        Tensor::randn([n], (Kind::Float, Device::Cpu)) * Tensor::randn([n], (Kind::Float, Device::Cpu)).exp2() * 4.0;
    let special = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-40,
        -3e-39,
        1e6,
        -7e4,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0xC0AA_8000),
    ];
    let k = special.len().min(n as usize) as i64;
    t.narrow(0, 0, k).copy_(&Tensor::from_slice(&special[..k as usize]));
    t.reshape(shape)
}

/// Both tensors as f32 (exact for every kind used here), NaN compared as NaN, everything else bit for bit.
fn assert_bit_equal(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    assert_eq!(got.kind(), want.kind(), "{what}: kind");
    let (g, w) = (got.to_kind(Kind::Float).contiguous(), want.to_kind(Kind::Float).contiguous());
    assert!(g.isnan().equal(&w.isnan()), "{what}: NaN positions differ");
    let g: Vec<f32> = Vec::try_from(g.nan_to_num(0.0, None, None).flatten(0, -1)).unwrap();
    let w: Vec<f32> = Vec::try_from(w.nan_to_num(0.0, None, None).flatten(0, -1)).unwrap();
    let bad = g.iter().zip(&w).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(bad, 0, "{what}: {bad} of {} values differ from LibTorch's conversion", g.len());
}

fn assert_layout(t: &Tensor, shape: [i64; 4], what: &str) {
    let spatial = shape[2] * shape[3] > 1;
    if spatial && shape[1] > 1 {
        assert!(is_channels_last(t), "{what}: strides {:?} are not channels-last", t.stride());
    }
    // The order in memory must be [O, H, W, I] whatever the strides say about size-1 dimensions.
    let memory = t.permute([0, 2, 3, 1]);
    assert!(memory.is_contiguous() || !spatial, "{what}: memory is not [O, H, W, I] (strides {:?})", t.stride());
}

fn load(path: &Path, kind: Kind, shape: [i64; 4]) -> Tensor {
    let vb = VarBuilder::from_safetensors(&[path.to_path_buf()], kind, Device::Cpu)
        .unwrap()
        .with_channels_last(true)
        .unwrap();
    let t = vb.get(&shape, "w").unwrap();
    vb.finish("test weights", &[]).unwrap();
    t
}

#[test]
fn channels_last_load_matches_libtorch_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = [
        (Kind::Float, Kind::BFloat16),
        (Kind::Half, Kind::BFloat16),
        (Kind::BFloat16, Kind::BFloat16),
        (Kind::Half, Kind::Half),
        (Kind::Float, Kind::Float),
        (Kind::Float, Kind::Half),
        (Kind::Double, Kind::BFloat16),
        (Kind::BFloat16, Kind::Float),
    ];
    for (seed, (stored, wanted)) in pairs.into_iter().enumerate() {
        for shape in SHAPES {
            let what = format!("{stored:?} → {wanted:?} {shape:?}");
            let src = values(shape, seed as i64).to_kind(stored);
            let path = dir.path().join(format!("w-{seed}-{}.safetensors", shape[0]));
            save_safetensors(&[("w".into(), src.shallow_clone())], &path, None, Overwrite::Allow).unwrap();
            let got = load(&path, wanted, shape);
            assert_bit_equal(&got, &src.to_kind(wanted), &what);
            assert_layout(&got, shape, &what);

            // The same tensor from memory (converted checkpoints, LoRA-merged weights) takes the re-layout path.
            let map = HashMap::from([("w".to_string(), src.shallow_clone())]);
            let vb = VarBuilder::from_tensors(map, "memory", wanted, Device::Cpu).with_channels_last(true).unwrap();
            let got = vb.get(&shape, "w").unwrap();
            assert_bit_equal(&got, &src.to_kind(wanted), &format!("{what} from memory"));
            assert_layout(&got, shape, &format!("{what} from memory"));
        }
    }
}

/// A tensor whose data does not start on a 4-byte boundary (legal in safetensors) cannot be viewed in place; it is
/// copied out first, with the same result.
#[test]
fn unaligned_f32_weights_load_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [5i64, 7, 3, 3];
    let src = values(shape, 11);
    let n: i64 = shape.iter().product();
    let data: Vec<f32> = Vec::try_from(src.flatten(0, -1)).unwrap();
    for pad in 1..=3usize {
        let header = serde_json::json!({
            "pad": {"dtype": "U8", "shape": [pad], "data_offsets": [0, pad]},
            "w": {"dtype": "F32", "shape": shape, "data_offsets": [pad, pad + 4 * n as usize]},
        })
        .to_string();
        if (8 + header.len() + pad).is_multiple_of(4) {
            continue;
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, pad));
        bytes.extend(data.iter().flat_map(|x| x.to_le_bytes()));
        let path = dir.path().join(format!("unaligned-{pad}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let vb = VarBuilder::from_safetensors(&[path], Kind::BFloat16, Device::Cpu)
            .unwrap()
            .with_channels_last(true)
            .unwrap();
        let got = vb.get(&shape, "w").unwrap();
        let what = format!("unaligned by {pad}");
        assert_bit_equal(&got, &src.to_kind(Kind::BFloat16), &what);
        assert_layout(&got, shape, &what);
    }
}
