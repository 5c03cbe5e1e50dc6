//! UniPC (bh1/bh2, orders 1–3, data and noise prediction, corrector on/off) against diffusers'
//! UniPCMultistepScheduler. Tolerance 1e-5 relative per step.
use crate::common;

#[test]
fn unipc_matches_diffusers() {
    common::run_family("unipc", &["unipc"], 1e-5);
}

/// DEIS (diffusers DEISMultistepScheduler), stored with the UniPC cases. Tolerance 1e-5 relative per step.
#[test]
fn deis_matches_diffusers() {
    common::run_family("unipc", &["deis"], 1e-5);
}
