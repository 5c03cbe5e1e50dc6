//! Flow-matching Euler against diffusers (FlowMatchEulerDiscreteScheduler, SD3's sampler), from
//! scripts/fixtures/gen_12_schedulers_flow.py: static shifts, Karras / exponential / beta sigmas, img2img through
//! `scale_noise`. Tolerance 1e-5 relative per step in float32 (schedules are float32 in both; measured worst
//! 0: bit-identical), 2.5e-2 in bfloat16 as for the other samplers' bf16 loops
//! (measured worst 3.9e-3, one bf16 ulp).
mod common;

fn dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/schedulers_flow").to_string()
}

#[test]
fn flow_euler_matches_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "flow", &["flow-euler"], 1e-5), 13);
}

#[test]
fn flow_euler_bf16_matches_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "bf16", &["flow-euler"], 2.5e-2), 2);
}
