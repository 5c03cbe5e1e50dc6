//! DPM-Solver(++) multistep (2M, 2M SDE, 3M SDE, noise-prediction 2M) against diffusers'
//! DPMSolverMultistepScheduler. Tolerance 1e-5 relative per step.
use crate::common;

#[test]
fn dpmpp_2m_matches_diffusers() {
    common::run_family("dpm", &["dpmpp-2m"], 1e-5);
}

#[test]
fn dpmpp_sde_matches_diffusers() {
    common::run_family("dpm", &["dpmpp-2m-sde", "dpmpp-3m-sde"], 1e-5);
}

#[test]
fn dpm_2m_matches_diffusers() {
    common::run_family("dpm", &["dpm-2m"], 1e-5);
}

/// DPMSolverSinglestepScheduler (orders 1–3, midpoint/heun, ++/noise/SDE). Tolerance 1e-5 relative per step.
#[test]
fn dpm_singlestep_matches_diffusers() {
    common::run_family("dpm", &["dpmpp-2s"], 1e-5);
}
