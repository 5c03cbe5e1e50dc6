//! TorchGenerator against torch 2.13's own `torch.randn` / `torch.rand` (fixtures/randn, made by
//! scripts/fixtures/gen_01_randn.py). Tolerance: none — every value must have the same bits.

use sd_core::rng::{NormalKernel, TorchGenerator};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/randn");

fn kind_of(dtype: &str) -> (Kind, usize) {
    match dtype {
        "f32" => (Kind::Float, 4),
        "f64" => (Kind::Double, 8),
        "f16" => (Kind::Half, 2),
        "bf16" => (Kind::BFloat16, 2),
        other => panic!("fixture names unknown dtype {other}"),
    }
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let flat = t.reshape([-1]).contiguous().view_dtype(Kind::Uint8);
    Vec::<u8>::try_from(&flat).expect("tensor bytes")
}

/// Index and both values of the first differing element, for a readable failure.
fn first_difference(ours: &[u8], theirs: &[u8], width: usize) -> String {
    let i = ours.chunks(width).zip(theirs.chunks(width)).position(|(a, b)| a != b);
    match i {
        Some(i) => {
            let show = |b: &[u8]| -> String {
                match width {
                    4 => format!("{:e}", f32::from_le_bytes(b.try_into().unwrap())),
                    8 => format!("{:e}", f64::from_le_bytes(b.try_into().unwrap())),
                    _ => format!("{:#06x}", u16::from_le_bytes(b.try_into().unwrap())),
                }
            };
            let (a, b) = (&ours[i * width..(i + 1) * width], &theirs[i * width..(i + 1) * width]);
            format!("element {i}: ours {} torch {}", show(a), show(b))
        }
        None => format!("lengths {} vs {}", ours.len(), theirs.len()),
    }
}

fn check_kernel(file: &str, kernel: NormalKernel) {
    let json_path = format!("{DIR}/{file}.json");
    let st_path = format!("{DIR}/{file}.safetensors");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path).unwrap_or_else(|e| panic!("missing fixture {json_path}: {e}")),
    )
    .expect("fixture json");
    let st_bytes = std::fs::read(&st_path).unwrap_or_else(|e| panic!("missing fixture {st_path}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("fixture safetensors");
    let expected = |key: &str| st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}")).data().to_vec();

    let cases = meta["cases"].as_array().expect("cases");
    assert!(cases.len() > 50, "fixture has too few cases");
    let mut compared = 0usize;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let seed: u64 = case["seed"].as_str().unwrap().parse().unwrap();
        let mut g = TorchGenerator::with_kernel(seed, kernel);
        for (i, op) in case["ops"].as_array().unwrap().iter().enumerate() {
            let shape: Vec<i64> = op["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let (kind, width) = kind_of(op["dtype"].as_str().unwrap());
            let t = match op["op"].as_str().unwrap() {
                "randn" => g.try_randn(&shape, kind, Device::Cpu).unwrap(),
                _ => g.rand(&shape, kind, Device::Cpu),
            };
            assert_eq!(t.size(), shape, "{name} op {i}: shape");
            assert_eq!(t.kind(), kind, "{name} op {i}: kind");
            let ours = bytes_of(&t);
            let what = format!("{file}: {name} op {i} ({} {:?} {})", op["op"], shape, op["dtype"]);
            if let Some(key) = op["whole"].as_str() {
                let theirs = expected(key);
                assert!(ours == theirs, "{what}: {}", first_difference(&ours, &theirs, width));
            } else {
                for s in op["slices"].as_array().unwrap() {
                    let off = s["offset"].as_u64().unwrap() as usize * width;
                    let theirs = expected(s["key"].as_str().unwrap());
                    let mine = &ours[off..off + theirs.len()];
                    assert!(
                        mine == theirs.as_slice(),
                        "{what} slice at {off}: {}",
                        first_difference(mine, &theirs, width)
                    );
                }
                let digest = hex(&Sha256::digest(&ours));
                assert_eq!(digest, op["sha256"].as_str().unwrap(), "{what}: sha256 of all values");
            }
            compared += ours.len() / width;
        }
    }
    assert!(compared > 1_000_000, "compared only {compared} values");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn avx2_kernel_matches_torch_bit_for_bit() {
    check_kernel("avx2", NormalKernel::Avx2);
}

#[test]
fn default_kernel_matches_torch_bit_for_bit() {
    check_kernel("default", NormalKernel::Default);
}

#[test]
fn seed_and_kernel_are_reported() {
    let g = TorchGenerator::with_kernel(2u64.pow(32) + 5, NormalKernel::Default);
    assert_eq!(g.seed(), 2u64.pow(32) + 5);
    assert_eq!(g.kernel(), NormalKernel::Default);
}

#[test]
fn non_float_kinds_are_refused() {
    let mut g = TorchGenerator::with_kernel(0, NormalKernel::Avx2);
    let err = g.try_randn(&[4], Kind::Int64, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("Int64"), "{err}");
    assert!(g.try_randn(&[2, -1], Kind::Float, Device::Cpu).is_err());
}
