//! DPM++ SDE against diffusers' DPMSolverSDEScheduler (torchsde Brownian-tree noise) and DPM++ 2S a against
//! k-diffusion's `sample_dpmpp_2s_ancestral`, replaying `scripts/fixtures/gen_11_schedulers_sde.py`'s loops.
//! Tolerance 1e-5 relative per model evaluation.
mod common;

use sd_core::TorchGenerator;
use tch::{Device, Kind};

fn dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/schedulers_sde").to_string()
}

#[test]
fn dpmpp_sde_matches_diffusers() {
    let n = common::run_family_in(&dir(), "dpm_sde", &["dpmpp-sde"], 1e-5);
    assert!(n >= 10, "only {n} cases");
}

#[test]
fn dpmpp_2s_ancestral_matches_k_diffusion() {
    let n = common::run_family_in(&dir(), "dpmpp_2s_a", &["dpmpp-2s-a"], 1e-5);
    assert!(n >= 10, "only {n} cases");
}

/// Without `noise_sampler_seed`, the tree seed is `torch.randint(0, 2**63 - 1, [], generator=g)` drawn right after
/// the initial latents (and img2img noise); the fixture recorded the value torch drew.
#[test]
fn unset_noise_seed_is_torch_randint_from_the_generator() {
    let path = format!("{}/dpm_sde.json", dir());
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap();
    let shape: Vec<i64> = j["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut checked = 0;
    for cs in j["cases"].as_array().unwrap() {
        let Some(want) = cs["drawn_noise_seed"].as_u64() else { continue };
        let mut g = TorchGenerator::new(cs["seed"].as_u64().unwrap());
        let _latents = g.randn(&shape, Kind::Float, Device::Cpu);
        let got = g.next_u64() % ((1u64 << 63) - 1);
        assert_eq!(got, want, "{}", cs["key"]);
        checked += 1;
    }
    assert!(checked > 0);
}
