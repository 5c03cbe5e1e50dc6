//! DPM++ SDE against diffusers' DPMSolverSDEScheduler (torchsde Brownian-tree noise), DPM++ 2S a against
//! k-diffusion's `sample_dpmpp_2s_ancestral` and DPM++ 2M SDE Heun against k-diffusion's
//! `sample_dpmpp_2m_sde(solver_type="heun")` with its Brownian-tree noise sampler, replaying
//! `scripts/fixtures/gen_11_schedulers_sde.py`'s loops. Tolerance 1e-5 relative per model evaluation.
use crate::common;

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

/// Heun and midpoint corrections, eta 1 / 0.5 / 0, Karras / exponential / AYS sigmas, v-prediction, img2img.
#[test]
fn dpmpp_2m_sde_heun_matches_k_diffusion() {
    let n = common::run_family_in(&dir(), "dpmpp_2m_sde_heun", &["dpmpp-2m-sde-heun"], 1e-5);
    assert!(n >= 15, "only {n} cases");
}

/// Without `noise_sampler_seed`, the tree seed is `torch.randint(0, 2**63 - 1, [], generator=g)` drawn right after
/// the initial latents (and img2img noise); the fixture recorded the value torch drew.
#[test]
fn unset_noise_seed_is_torch_randint_from_the_generator() {
    let mut checked = 0;
    for family in ["dpm_sde", "dpmpp_2m_sde_heun"] {
        let path = format!("{}/{family}.json", dir());
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap();
        let shape: Vec<i64> = j["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        for cs in j["cases"].as_array().unwrap() {
            let Some(want) = cs["drawn_noise_seed"].as_u64() else { continue };
            let mut g = TorchGenerator::new(cs["seed"].as_u64().unwrap());
            let _latents = g.randn(&shape, Kind::Float, Device::Cpu);
            let got = g.next_u64() % ((1u64 << 63) - 1);
            assert_eq!(got, want, "{family} {}", cs["key"]);
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked}");
}
