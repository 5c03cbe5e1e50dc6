//! `SchedulerConfig`: the union of the diffusers scheduler `__init__` arguments, under diffusers' field names, so a
//! model's saved `scheduler_config.json` deserializes directly. Unknown fields are tolerated (serde default).

use serde::{Deserialize, Serialize};

/// Every field any supported scheduler class reads. Which ones a class actually uses, and its defaults, come from
/// that class's `defaults()` (see `registry.rs`): `build` overlays the model's saved values onto them, as
/// diffusers' `from_config` does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub steps_offset: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub skip_prk_steps: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub rescale_betas_zero_snr: bool,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub solver_order: usize,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub final_sigmas_type: String,
    pub interpolation_type: String,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: String,
    pub variance_type: Option<String>,
    /// `None` = -infinity (diffusers' default; JSON cannot hold it).
    pub lambda_min_clipped: Option<f64>,
    pub predict_x0: bool,
    pub disable_corrector: Vec<usize>,
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
    pub sigma_data: f64,
    pub sigma_schedule: String,
    pub rho: f64,
    pub eta: f64,
    /// `DPMSolverSDEScheduler`'s Brownian-tree seed; `None` draws it from the sampling generator.
    pub noise_sampler_seed: Option<u64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: String::new(),
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            timestep_spacing: "linspace".into(),
            steps_offset: 0,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            skip_prk_steps: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            rescale_betas_zero_snr: false,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            solver_order: 2,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas_type: "zero".into(),
            interpolation_type: "linear".into(),
            sigma_min: None,
            sigma_max: None,
            timestep_type: "discrete".into(),
            variance_type: None,
            lambda_min_clipped: None,
            predict_x0: true,
            disable_corrector: vec![],
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            sigma_data: 0.5,
            sigma_schedule: "karras".into(),
            rho: 7.0,
            eta: 0.0,
            noise_sampler_seed: None,
        }
    }
}

/// What the model predicts; parsed once so samplers match on an enum instead of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

impl SchedulerConfig {
    pub fn prediction(&self) -> anyhow::Result<Prediction> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            "sample" | "original_sample" => Ok(Prediction::Sample),
            other => anyhow::bail!(
                "scheduler config field `prediction_type` is {other:?}; expected \"epsilon\", \"v_prediction\" or \"sample\""
            ),
        }
    }

    /// How many of the mutually exclusive sigma-schedule flags are set (diffusers refuses more than one).
    pub fn check_sigma_flags(&self) -> anyhow::Result<()> {
        let n = self.sigma_flags().filter(|b| *b).count();
        anyhow::ensure!(
            n <= 1,
            "scheduler config sets more than one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas"
        );
        Ok(())
    }

    /// A custom timestep list fixes the sigmas itself, so diffusers refuses it together with a re-spacing flag.
    pub fn check_custom_timesteps(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.sigma_flags().any(|b| b),
            "custom timesteps cannot be combined with Karras / exponential / beta sigmas"
        );
        Ok(())
    }

    fn sigma_flags(&self) -> impl Iterator<Item = bool> {
        [self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas].into_iter()
    }
}
