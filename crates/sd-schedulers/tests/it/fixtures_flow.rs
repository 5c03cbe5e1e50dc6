//! The flow-matching samplers (SD3 / SD3.5) against their references, from scripts/fixtures/gen_12_schedulers_flow.py:
//!
//! - flow-euler: diffusers' FlowMatchEulerDiscreteScheduler; static shifts, Karras / exponential / beta sigmas,
//!   img2img through `scale_noise`, and the resolution-dependent shift (`use_dynamic_shifting` with `mu`);
//! - flow-heun: FlowMatchHeunDiscreteScheduler; step counts, shifts, img2img;
//! - flow-dpmpp-2m: DPMSolverMultistepScheduler with `use_flow_sigmas`, `flow_prediction` and the model's shift as
//!   `flow_shift`; the lower-order warm-up and final steps around 15 steps, Heun correction, third order;
//! - flow-euler-a: the script's re-implementation of ComfyUI's `sample_euler_ancestral_RF` over flow-euler's sigmas,
//!   with the same noise draws; η 1, 0.5, 0.8 and 0, Karras, dynamic shift, img2img.
//!
//! Tolerance 1e-5 relative per step in float32 (measured worst: flow-euler 0, flow-heun 0, flow-euler-a 0 — all
//! bit-identical — and flow-dpmpp-2m 2.6e-7, its step coefficients computed in float64 where diffusers uses
//! float32 0-d tensors); 2.5e-2 in bfloat16 as for the other samplers' bf16 loops (measured worst 9.4e-3 over the
//! four bf16 cases).
use crate::common;

fn dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/schedulers_flow").to_string()
}

#[test]
fn flow_euler_matches_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "flow", &["flow-euler"], 1e-5), 17);
}

#[test]
fn flow_heun_matches_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "flow_heun", &["flow-heun"], 1e-5), 8);
}

#[test]
fn flow_dpmpp_2m_matches_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "flow_dpm", &["flow-dpmpp-2m"], 1e-5), 10);
}

#[test]
fn flow_euler_a_matches_comfyui_reimplementation() {
    assert_eq!(common::run_family_in(&dir(), "flow_euler_a", &["flow-euler-a"], 1e-5), 10);
}

#[test]
fn flow_samplers_bf16_match_diffusers() {
    assert_eq!(common::run_family_in(&dir(), "bf16", &["flow-euler", "flow-heun", "flow-dpmpp-2m"], 2.5e-2), 4);
}
