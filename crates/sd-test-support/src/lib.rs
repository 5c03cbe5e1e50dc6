//! What every crate's integration tests need, in one place: where the committed fixtures live and how two tensors
//! are compared. A dev-dependency only; nothing in a library crate may use it. `sd-provenance` does without it:
//! its tests stay as free of LibTorch as the crate is.
//!
//! No modules; the items: [`repo_root`] and [`fixtures`] (the workspace root and its `fixtures/` folder, from any
//! crate), [`max_abs_diff`] (the largest absolute difference of two same-shaped tensors, computed in f64), [`crc32`]
//! (of PNG chunks and ZIP entries, for tests that build or corrupt such files by hand).

use std::path::PathBuf;
use tch::{Kind, Tensor};

/// The workspace root (this crate sits two folders below it, as every crate does).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The committed fixtures made by `scripts/fixtures/gen_*.py`.
pub fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

/// `max |a - b|` over every element, in f64 so the comparison itself adds no rounding; the shapes must be equal
/// (broadcasting would hide a wrong shape behind a small number).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// CRC-32 (IEEE 802.3, reflected, as PNG and ZIP use it).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}
