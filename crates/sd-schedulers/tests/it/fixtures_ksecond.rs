//! Heun, DPM2 and DPM2 a (two model calls per step) against diffusers' HeunDiscreteScheduler,
//! KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler. Tolerance 1e-5 relative per step.
use crate::common;

#[test]
fn heun_matches_diffusers() {
    common::run_family("ksecond", &["heun"], 1e-5);
}

#[test]
fn dpm2_matches_diffusers() {
    common::run_family("ksecond", &["dpm2"], 1e-5);
}

#[test]
fn dpm2_ancestral_matches_diffusers() {
    common::run_family("ksecond", &["dpm2-a"], 1e-5);
}
