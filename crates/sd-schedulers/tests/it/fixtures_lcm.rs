//! LCM and TCD against diffusers' LCMScheduler and TCDScheduler. Tolerance 1e-5 relative per step.
use crate::common;

#[test]
fn lcm_matches_diffusers() {
    common::run_family("lcm", &["lcm"], 1e-5);
}

#[test]
fn tcd_matches_diffusers() {
    common::run_family("lcm", &["tcd"], 1e-5);
}
