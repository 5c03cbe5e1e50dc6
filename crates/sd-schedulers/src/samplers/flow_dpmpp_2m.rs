//! DPM-Solver++ 2M for rectified-flow models (SD3 / SD3.5) — diffusers `DPMSolverMultistepScheduler` with
//! `use_flow_sigmas=True`, `prediction_type="flow_prediction"` and `flow_shift` set to the model's own `shift`, as
//! one swaps it into a `StableDiffusion3Pipeline`. The solver is `DpmMultistep` (`dpm_multistep.rs`); this file
//! declares the settings that make it the flow sampler, so `sd samplers` lists it with the SD3 samplers.
//!
//! The model's `shift` (a `FlowMatchEulerDiscreteScheduler` key, kept among the config's hidden keys when the
//! DPM-Solver class reads the config) becomes `flow_shift`; a DPM-Solver config of its own keeps its `flow_shift`.

use crate::choice::Schedule;
use crate::config::{AlgorithmType, Prediction};
use crate::descriptor::{Descriptor, Models};
use crate::samplers::dpm_multistep::{build, CLASS};

pub static FLOW_DPMPP_2M: Descriptor = Descriptor {
    name: "flow-dpmpp-2m",
    a1111: &[],
    class: &CLASS,
    preset: |c| {
        c.algorithm_type = AlgorithmType::DpmSolverPlusPlus;
        c.solver_order = 2;
        c.use_flow_sigmas = true;
        c.prediction_type = Prediction::FlowPrediction;
        if let Some(shift) = c.hidden.get("shift").and_then(serde_json::Value::as_f64) {
            c.flow_shift = shift;
        }
    },
    schedules: &[Schedule::Normal],
    options: &[],
    models: Models::Flow,
    description: "DPM-Solver++ second-order multistep over flow sigmas (SD3 / SD3.5)",
    build,
};
