//! Sampler loops run in bfloat16, as a bf16 pipeline runs them, against diffusers doing the same
//! (`scripts/fixtures/gen_10_schedulers.py`, `bf16.json`): latents and model output in bf16, step noise in the dtype
//! each diffusers class asks for, every state returned in the loop's dtype (asserted).
//! Tolerance 2.5e-2 relative per step, about six bf16 ulps: both sides round every state to 8 significant bits, in
//! different places. Measured worst: 2.2e-2 for DPM2 a (second order, its derivative amplifies the rounding),
//! 4e-3 to 1.6e-2 for the others.
use crate::common;

#[test]
fn bf16_loops_match_diffusers() {
    let samplers = ["euler", "euler-a", "ddim", "ddpm", "dpm2-a", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-2s", "lcm", "tcd"];
    let n = common::run_family("bf16", &samplers, 2.5e-2);
    assert_eq!(n, samplers.len());
}
