//! Euler and Euler a against diffusers (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler).
//! Tolerance 1e-5 relative per step in f32 (sigmas are float32 in both; step math differs only in rounding order).
use crate::common;

#[test]
fn euler_matches_diffusers() {
    common::run_family("euler", &["euler"], 1e-5);
}

#[test]
fn euler_ancestral_matches_diffusers() {
    common::run_family("euler", &["euler-a"], 1e-5);
}

#[test]
fn edm_euler_matches_diffusers() {
    common::run_family("euler", &["edm-euler"], 1e-5);
}
