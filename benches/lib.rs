//! Shared helpers for the criterion benches in this folder.

use std::path::PathBuf;
use tch::{Kind, Tensor};

/// A weights file and the (name, shape) of every tensor in it.
pub type SyntheticWeights = (PathBuf, Vec<(String, Vec<i64>)>);

/// Write a safetensors file of roughly `megabytes` MB of f32 tensors shaped like UNet conv weights.
pub fn synthetic_weights(dir: &std::path::Path, megabytes: usize) -> anyhow::Result<SyntheticWeights> {
    let per = [320i64, 320, 3, 3];
    let per_bytes = (per.iter().product::<i64>() * 4) as usize;
    let count = (megabytes * 1024 * 1024).div_ceil(per_bytes);
    let mut tensors = Vec::with_capacity(count);
    let mut shapes = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("blocks.{i}.conv.weight");
        tensors.push((name.clone(), Tensor::randn(per, (Kind::Float, tch::Device::Cpu))));
        shapes.push((name, per.to_vec()));
    }
    let path = dir.join("weights.safetensors");
    sd_core::weights::save_safetensors(&tensors, &path, None, sd_core::atomic::Overwrite::Allow)?;
    Ok((path, shapes))
}
