//! Tiled VAE encode/decode against diffusers' `enable_tiling()` (16 px tiles on the tiny sd1 VAE, so a 40×48
//! image spans 4×4 tiles and a 20×24 latent 4×4 tiles). Tolerance: f32 max abs error ≤ 1e-4.
//!
//! Seams: the tiny random VAE's receptive field is larger than a 16 px tile, so its tiles legitimately differ a
//! lot from the untiled output; seam-freedom is therefore measured on the stitching itself (see
//! `blending_spreads_tile_differences_over_the_overlap`): metric = largest adjacent-pixel step of the output.

use sd_models::vae::{tiled_decode, AutoencoderKL, TilingConfig};
use sd_test_support::{fixtures, max_abs_diff};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn read(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("vae").join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn load(tiling: Option<TilingConfig>) -> AutoencoderKL {
    let mut vae = AutoencoderKL::load(&fixtures().join("models/sd1/vae"), Kind::Float, Device::Cpu).expect("load");
    vae.set_tiling(tiling);
    vae
}

fn tiles() -> TilingConfig {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("vae/sd1_tiled.json")).expect("json"))
            .expect("json");
    let t = TilingConfig {
        tile_sample_min_size: meta["tile_sample_min_size"].as_i64().expect("size"),
        tile_overlap_factor: meta["tile_overlap_factor"].as_f64().expect("overlap"),
    };
    assert_eq!(t.tile_latent_min_size(2), meta["tile_latent_min_size"].as_i64().expect("latent"));
    t
}

#[test]
fn tiled_decode_matches_diffusers() {
    let r = read("sd1_tiled.safetensors");
    let tiled = load(Some(tiles())).decode(&r["z"]).expect("tiled decode");
    let d = max_abs_diff(&tiled, &r["decoded"]);
    println!("tiled decode vs diffusers: max abs diff {d:.3e}");
    assert!(d <= TOL, "tiled decode differs from diffusers by {d}");
}

/// Largest |x[k] - x[k-1]| along H and W.
fn max_step(x: &Tensor) -> f64 {
    [2i64, 3]
        .iter()
        .map(|&dim| {
            let n = x.size()[dim as usize];
            (x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Each tile comes back as a flat image at its own brightness (0.1 × its row-major call index): the worst case
/// for seams. Without overlap (3×3 tiles) the output jumps by 0.3 at horizontal tile borders. With overlap
/// (4×4 tiles, vertical neighbours 0.4 apart) the jump is spread over the int(16 · 0.25) = 4 px blend band: an
/// ideal linear ramp has steps of 0.4 / 4 = 0.1; diffusers' in-place blending order (emulated in Python on the
/// same flat tiles) peaks at 0.1063 in a corner band. Bound: 0.11.
#[test]
fn blending_spreads_tile_differences_over_the_overlap() {
    let z = Tensor::zeros([1, 4, 20, 24], (Kind::Float, Device::Cpu));
    let flat_tiles = |t: &TilingConfig| {
        let mut k = 0.0;
        tiled_decode(&z, t, 2, |tile| {
            let (h, w) = (tile.size()[2], tile.size()[3]);
            k += 1.0;
            Ok(Tensor::full([1, 3, 2 * h, 2 * w], 0.1 * k, (Kind::Float, Device::Cpu)))
        })
        .expect("tiled")
    };
    let hard = flat_tiles(&TilingConfig { tile_sample_min_size: 16, tile_overlap_factor: 0.0 });
    let soft = flat_tiles(&tiles());
    assert_eq!(soft.size(), [1, 3, 40, 48]);
    let (h, s) = (max_step(&hard), max_step(&soft));
    println!("largest adjacent-pixel step: unblended {h:.4}, blended {s:.4}");
    assert!((h - 0.3).abs() < 1e-6, "control: unblended tiles should jump by 0.3, got {h}");
    assert!(s <= 0.11, "blended tiles still jump by {s}");
}

#[test]
fn tiled_encode_matches_diffusers() {
    let r = read("sd1_tiled.safetensors");
    let post = load(Some(tiles())).encode(&r["x"]).expect("tiled encode");
    let (dm, dl) = (max_abs_diff(&post.mean, &r["mean"]), max_abs_diff(&post.logvar, &r["logvar"]));
    println!("tiled encode vs diffusers: mean {dm:.3e}, logvar {dl:.3e}");
    assert!(dm <= TOL && dl <= TOL, "tiled encode differs from diffusers: mean {dm}, logvar {dl}");
}

#[test]
fn small_inputs_skip_tiling() {
    let r = read("sd1.safetensors");
    let plain = load(None).decode(&r["z"]).expect("decode");
    let big_tiles = TilingConfig { tile_sample_min_size: 64, tile_overlap_factor: 0.25 };
    let tiled = load(Some(big_tiles)).decode(&r["z"]).expect("decode");
    assert!(plain.equal(&tiled), "a latent within one tile must decode exactly as untiled");
    let vae = load(None);
    let default = TilingConfig::for_config(vae.config());
    assert_eq!(default, TilingConfig { tile_sample_min_size: 32, tile_overlap_factor: 0.25 });
}
