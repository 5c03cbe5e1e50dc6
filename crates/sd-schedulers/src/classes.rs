//! The diffusers scheduler classes: their `__init__` defaults (diffusers 0.42.1) and constructors. `build` starts
//! from these defaults and overlays the model's saved values for the keys a class knows (diffusers' `from_config`).

use crate::samplers;
use crate::{Scheduler, SchedulerConfig};
use anyhow::Result;

type Ctor = fn(&str, SchedulerConfig) -> Result<Box<dyn Scheduler>>;

pub struct Class {
    pub name: &'static str,
    /// The class's `__init__` arguments with their defaults (diffusers 0.42.1).
    pub defaults: &'static str,
    pub make: Ctor,
}

fn boxed<S: Scheduler + 'static>(r: Result<S>) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(r?))
}

/// The "class" of DPM++ 2S a, which diffusers lacks (shown by `sd samplers`).
pub const K2SA: &str = "k-diffusion sample_dpmpp_2s_ancestral";

pub const COMMON: &str =
    r#""num_train_timesteps":1000,"beta_start":0.0001,"beta_end":0.02,"beta_schedule":"linear","trained_betas":null"#;

pub fn classes() -> Vec<Class> {
    vec![
        Class {
            name: "EulerDiscreteScheduler",
            defaults: r#"{"prediction_type":"epsilon","interpolation_type":"linear","use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"sigma_min":null,"sigma_max":null,"timestep_spacing":"linspace","timestep_type":"discrete","steps_offset":0,"rescale_betas_zero_snr":false,"final_sigmas_type":"zero"}"#,
            make: |n, c| boxed(samplers::euler::Euler::new(n, c)),
        },
        Class {
            name: "EulerAncestralDiscreteScheduler",
            defaults: r#"{"prediction_type":"epsilon","timestep_spacing":"linspace","steps_offset":0,"rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::euler_ancestral::EulerAncestral::new(n, c)),
        },
        Class {
            name: "DDIMScheduler",
            defaults: r#"{"clip_sample":true,"set_alpha_to_one":true,"steps_offset":0,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"clip_sample_range":1.0,"sample_max_value":1.0,"timestep_spacing":"leading","rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::ddim::Ddim::new(n, c)),
        },
        Class {
            name: "DPMSolverMultistepScheduler",
            defaults: r#"{"solver_order":2,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"algorithm_type":"dpmsolver++","solver_type":"midpoint","lower_order_final":true,"euler_at_final":false,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"use_lu_lambdas":false,"use_flow_sigmas":false,"flow_shift":1.0,"final_sigmas_type":"zero","lambda_min_clipped":null,"variance_type":null,"timestep_spacing":"linspace","steps_offset":0,"rescale_betas_zero_snr":false,"use_dynamic_shifting":false,"time_shift_type":"exponential"}"#,
            make: |n, c| boxed(samplers::dpm_multistep::DpmMultistep::new(n, c)),
        },
        Class {
            name: "HeunDiscreteScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"prediction_type":"epsilon","use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"clip_sample":false,"clip_sample_range":1.0,"timestep_spacing":"linspace","steps_offset":0}"#,
            make: |n, c| boxed(samplers::heun::Heun::new(n, c)),
        },
        Class {
            name: "LMSDiscreteScheduler",
            defaults: r#"{"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"prediction_type":"epsilon","timestep_spacing":"linspace","steps_offset":0}"#,
            make: |n, c| boxed(samplers::lms::Lms::new(n, c)),
        },
        Class {
            name: "KDPM2DiscreteScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"prediction_type":"epsilon","timestep_spacing":"linspace","steps_offset":0}"#,
            make: |n, c| boxed(samplers::kdpm2::Kdpm2::new(n, c, false)),
        },
        Class {
            name: "KDPM2AncestralDiscreteScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"prediction_type":"epsilon","timestep_spacing":"linspace","steps_offset":0}"#,
            make: |n, c| boxed(samplers::kdpm2::Kdpm2::new(n, c, true)),
        },
        Class {
            name: "DDPMScheduler",
            defaults: r#"{"variance_type":"fixed_small","clip_sample":true,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"clip_sample_range":1.0,"sample_max_value":1.0,"timestep_spacing":"leading","steps_offset":0,"rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::ddpm::Ddpm::new(n, c)),
        },
        Class {
            name: "PNDMScheduler",
            defaults: r#"{"skip_prk_steps":false,"set_alpha_to_one":false,"prediction_type":"epsilon","timestep_spacing":"leading","steps_offset":0}"#,
            make: |n, c| boxed(samplers::pndm::Pndm::new(n, c)),
        },
        Class {
            name: "UniPCMultistepScheduler",
            defaults: r#"{"solver_order":2,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"predict_x0":true,"solver_type":"bh2","lower_order_final":true,"disable_corrector":[],"solver_p":null,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"use_flow_sigmas":false,"flow_shift":1.0,"timestep_spacing":"linspace","steps_offset":0,"final_sigmas_type":"zero","rescale_betas_zero_snr":false,"use_dynamic_shifting":false,"time_shift_type":"exponential","sigma_min":null,"sigma_max":null,"shift_terminal":null}"#,
            make: |n, c| boxed(samplers::unipc::UniPc::new(n, c)),
        },
        Class {
            name: "LCMScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear","original_inference_steps":50,"clip_sample":false,"clip_sample_range":1.0,"set_alpha_to_one":true,"steps_offset":0,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"timestep_spacing":"leading","timestep_scaling":10.0,"rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::lcm::Lcm::new(n, c, false)),
        },
        Class {
            name: "TCDScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear","original_inference_steps":50,"clip_sample":false,"clip_sample_range":1.0,"set_alpha_to_one":true,"steps_offset":0,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"timestep_spacing":"leading","timestep_scaling":10.0,"rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::lcm::Lcm::new(n, c, true)),
        },
        Class {
            name: "EDMEulerScheduler",
            defaults: r#"{"sigma_min":0.002,"sigma_max":80.0,"sigma_data":0.5,"sigma_schedule":"karras","num_train_timesteps":1000,"prediction_type":"epsilon","rho":7.0,"final_sigmas_type":"zero"}"#,
            make: |n, c| boxed(samplers::edm_euler::EdmEuler::new(n, c)),
        },
        Class {
            name: "DEISMultistepScheduler",
            defaults: r#"{"solver_order":2,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"algorithm_type":"deis","solver_type":"logrho","lower_order_final":true,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"use_flow_sigmas":false,"flow_shift":1.0,"timestep_spacing":"linspace","steps_offset":0,"use_dynamic_shifting":false,"time_shift_type":"exponential"}"#,
            make: |n, c| boxed(samplers::deis::Deis::new(n, c)),
        },
        Class {
            name: "DPMSolverSinglestepScheduler",
            defaults: r#"{"solver_order":2,"prediction_type":"epsilon","thresholding":false,"dynamic_thresholding_ratio":0.995,"sample_max_value":1.0,"algorithm_type":"dpmsolver++","solver_type":"midpoint","lower_order_final":false,"use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"use_flow_sigmas":false,"flow_shift":1.0,"final_sigmas_type":"zero","lambda_min_clipped":null,"variance_type":null,"use_dynamic_shifting":false,"time_shift_type":"exponential"}"#,
            make: |n, c| boxed(samplers::dpm_singlestep::DpmSinglestep::new(n, c)),
        },
        Class {
            name: "DPMSolverSDEScheduler",
            defaults: r#"{"beta_start":0.00085,"beta_end":0.012,"prediction_type":"epsilon","use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"noise_sampler_seed":null,"timestep_spacing":"linspace","steps_offset":0}"#,
            make: |n, c| boxed(samplers::dpm_sde::DpmSde::new(n, c)),
        },
        // no diffusers class: k-diffusion's sampler over EulerDiscreteScheduler's sigma options
        Class {
            name: K2SA,
            defaults: r#"{"prediction_type":"epsilon","use_karras_sigmas":false,"use_exponential_sigmas":false,"use_beta_sigmas":false,"timestep_spacing":"linspace","steps_offset":0,"rescale_betas_zero_snr":false}"#,
            make: |n, c| boxed(samplers::dpmpp_2s_ancestral::Dpmpp2sAncestral::new(n, c)),
        },
    ]
}
