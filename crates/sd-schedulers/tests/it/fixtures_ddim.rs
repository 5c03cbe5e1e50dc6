//! DDIM against diffusers' DDIMScheduler (eta 0 and 1). Tolerance 1e-5 relative per step.
use crate::common;

#[test]
fn ddim_matches_diffusers() {
    common::run_family("ddim", &["ddim"], 1e-5);
}
