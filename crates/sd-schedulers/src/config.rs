//! `SchedulerConfig`: every diffusers scheduler `__init__` argument sd-rs reads, typed (enums for the string
//! choices), under diffusers' field names. One struct serves every class because the math shared by several classes
//! (betas, spacing, sigma schedules) reads the same fields; which fields a class has, and its defaults, are declared
//! by the class (`descriptor::Class`), and `from_config.rs` fills the struct the way diffusers' `from_config` does.
//!
//! Each field is listed once in the `scheduler_config!` invocation below, with its type and the default most
//! classes share; the macro derives the struct, its `Default`, the field-name list and the by-name access that
//! `from_config` needs, so a saved config is parsed field by field and a bad value names its field.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// diffusers' "sample" (older configs write "original_sample").
    #[serde(rename = "sample", alias = "original_sample")]
    Sample,
    /// Rectified flow's velocity v = ε − x₀ (DPM-Solver with `use_flow_sigmas`); the UNet samplers refuse it.
    #[serde(rename = "flow_prediction")]
    FlowPrediction,
}

/// How `betas` are laid out over the training timesteps (`beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    /// Linear in √β (Stable Diffusion).
    ScaledLinear,
    /// Glide's cosine schedule.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// How inference timesteps are picked from the training range (`timestep_spacing`, arXiv 2305.08891 Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The DPM-Solver variant (`algorithm_type`); "deis" is DEIS's own and reads as DPM-Solver++ elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    #[serde(rename = "deis")]
    Deis,
}

/// The second-order correction of multistep solvers (`solver_type`): DPM-Solver's midpoint / heun, DEIS's logrho,
/// UniPC's bh1 / bh2. A class reading another class's value maps it as diffusers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Midpoint,
    Heun,
    Logrho,
    Bh1,
    Bh2,
}

/// The sigma after the last step (`final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// How Euler interpolates sigmas between training timesteps (`interpolation_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Linear,
    LogLinear,
}

/// Whether Euler's timesteps are training indices or ¼·ln σ (`timestep_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    Discrete,
    Continuous,
}

/// DDPM's posterior variance (`variance_type`); the learned ones need a model with a variance output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
    FixedLargeLog,
    Learned,
    LearnedRange,
}

/// EDM Euler's sigma spacing (`sigma_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaSchedule {
    Karras,
    Exponential,
}

/// A value's JSON spelling, for messages ("sde-dpmsolver++", not `SdeDpmSolverPlusPlus`).
pub fn json_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// One field's value from its JSON, with an error that names the field.
fn parse_field<T: DeserializeOwned>(key: &str, value: &Value) -> Result<T> {
    serde_json::from_value(value.clone()).with_context(|| format!("scheduler config field `{key}` is {value}"))
}

macro_rules! scheduler_config {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, )*) => {
        /// The typed scheduler config (see the module doc). `hidden` and `defaulted` are diffusers' bookkeeping
        /// for switching classes: keys a class does not read are kept, and keys that took a class default are
        /// remembered so that a config saved from this sampler does not impose them on the next class.
        #[derive(Debug, Clone, PartialEq)]
        pub struct SchedulerConfig {
            /// The class these values belong to (diffusers' `_class_name`).
            pub class_name: String,
            $( $(#[$doc])* pub $field: $ty, )*
            /// Keys of the saved config this class does not read (diffusers keeps them as "hidden" config).
            pub hidden: BTreeMap<String, Value>,
            /// Class keys the saved config did not set, which took the class default (`_use_default_values`).
            pub defaulted: BTreeSet<String>,
        }

        impl Default for SchedulerConfig {
            fn default() -> Self {
                Self {
                    class_name: String::new(),
                    $( $field: $default, )*
                    hidden: BTreeMap::new(),
                    defaulted: BTreeSet::new(),
                }
            }
        }

        impl SchedulerConfig {
            /// Every field name (diffusers' spelling).
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Set the field `key` from its JSON value; `Ok(false)` when no field has that name.
            pub fn set_field(&mut self, key: &str, value: &Value) -> Result<bool> {
                match key {
                    $( stringify!($field) => self.$field = parse_field(key, value)?, )*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// The field `key` as JSON (as diffusers would save it); `None` when no field has that name.
            pub fn field(&self, key: &str) -> Option<Value> {
                match key {
                    $( stringify!($field) => Some(serde_json::to_value(&self.$field).unwrap_or(Value::Null)), )*
                    _ => None,
                }
            }
        }
    };
}

scheduler_config! {
    num_train_timesteps: usize = 1000,
    beta_start: f64 = 0.0001,
    beta_end: f64 = 0.02,
    beta_schedule: BetaSchedule = BetaSchedule::Linear,
    trained_betas: Option<Vec<f64>> = None,
    prediction_type: Prediction = Prediction::Epsilon,
    timestep_spacing: TimestepSpacing = TimestepSpacing::Linspace,
    steps_offset: usize = 0,
    clip_sample: bool = false,
    clip_sample_range: f64 = 1.0,
    set_alpha_to_one: bool = true,
    skip_prk_steps: bool = false,
    use_karras_sigmas: bool = false,
    use_exponential_sigmas: bool = false,
    use_beta_sigmas: bool = false,
    rescale_betas_zero_snr: bool = false,
    thresholding: bool = false,
    dynamic_thresholding_ratio: f64 = 0.995,
    sample_max_value: f64 = 1.0,
    solver_order: usize = 2,
    algorithm_type: AlgorithmType = AlgorithmType::DpmSolverPlusPlus,
    solver_type: SolverType = SolverType::Midpoint,
    lower_order_final: bool = true,
    euler_at_final: bool = false,
    final_sigmas_type: FinalSigmas = FinalSigmas::Zero,
    interpolation_type: Interpolation = Interpolation::Linear,
    sigma_min: Option<f64> = None,
    sigma_max: Option<f64> = None,
    timestep_type: TimestepType = TimestepType::Discrete,
    variance_type: Option<VarianceType> = None,
    /// `None` = −∞ (diffusers' default, which JSON cannot hold).
    lambda_min_clipped: Option<f64> = None,
    predict_x0: bool = true,
    disable_corrector: Vec<usize> = vec![],
    original_inference_steps: usize = 50,
    timestep_scaling: f64 = 10.0,
    sigma_data: f64 = 0.5,
    sigma_schedule: SigmaSchedule = SigmaSchedule::Karras,
    rho: f64 = 7.0,
    /// Flow matching's static timestep shift (SD3: 3.0).
    shift: f64 = 1.0,
    /// Flow matching's resolution-dependent shift: `set_timesteps` then takes `mu` (`Scheduler::set_mu`), which the
    /// pipeline computes from the image's token count with `base_shift` … `max_image_seq_len`.
    use_dynamic_shifting: bool = false,
    base_shift: Option<f64> = Some(0.5),
    max_shift: Option<f64> = Some(1.15),
    base_image_seq_len: usize = 256,
    max_image_seq_len: usize = 4096,
    /// DPM-Solver over rectified-flow sigmas (α = 1 − σ) instead of the VP table built from the betas.
    use_flow_sigmas: bool = false,
    /// DPM-Solver's static shift of its flow sigmas (SD3's `shift`).
    flow_shift: f64 = 1.0,
    /// Not a diffusers config field but a `step` argument there (DDIM's η, TCD's γ, k-diffusion's SDE η): set
    /// from `SamplerOptions::eta` for the samplers that declare it.
    eta: f64 = 0.0,
    /// The Brownian-tree seed of the Brownian-noise samplers; `None` draws it from the sampling generator.
    noise_sampler_seed: Option<u64> = None,
}

impl SchedulerConfig {
    /// Read any saved scheduler config with the shared defaults: every field it names is parsed (an invalid value
    /// is an error naming the field), the other keys are kept in `hidden`. For readers that need only the fields
    /// every class shares (the training schedule); samplers are built with `SamplerChoice::build`.
    pub fn from_any_json(map: &Map<String, Value>) -> Result<Self> {
        let mut cfg = Self::default();
        for (k, v) in map {
            if k == "_class_name" {
                cfg.class_name = v.as_str().unwrap_or_default().to_string();
            } else if !cfg.set_field(k, v)? {
                cfg.hidden.insert(k.clone(), v.clone());
            }
        }
        Ok(cfg)
    }

    /// diffusers refuses more than one of the Karras / exponential / beta flags.
    pub fn check_sigma_flags(&self) -> Result<()> {
        let n = self.sigma_flags().filter(|b| *b).count();
        anyhow::ensure!(
            n <= 1,
            "scheduler config sets more than one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas"
        );
        Ok(())
    }

    /// A custom timestep list fixes the sigmas itself, so diffusers refuses it together with a re-spacing flag.
    pub fn check_custom_timesteps(&self) -> Result<()> {
        anyhow::ensure!(
            !self.sigma_flags().any(|b| b),
            "custom timesteps cannot be combined with Karras / exponential / beta sigmas"
        );
        Ok(())
    }

    fn sigma_flags(&self) -> impl Iterator<Item = bool> {
        [self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas].into_iter()
    }

    /// The config as diffusers saves it for a class with `keys`: `_class_name`, the class's keys, the hidden keys
    /// it carries for other classes, and `_use_default_values`.
    pub fn to_json(&self, keys: &[&str]) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), Value::String(self.class_name.clone()));
        for (k, v) in &self.hidden {
            if k != "_class_name" && k != "_use_default_values" {
                m.insert(k.clone(), v.clone());
            }
        }
        for k in keys {
            if let Some(v) = self.field(k) {
                m.insert(k.to_string(), v);
            }
        }
        if !self.defaulted.is_empty() {
            m.insert("_use_default_values".into(), self.defaulted.iter().map(|k| Value::String(k.clone())).collect());
        }
        Value::Object(m)
    }
}

/// Any scheduler config, read with `from_any_json` (what the training code wants from a model's config).
impl<'de> Deserialize<'de> for SchedulerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Self::from_any_json(&map).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// Every field (not only one class's), plus the hidden keys: a debugging view; `to_json` is diffusers' form.
impl Serialize for SchedulerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut v = self.to_json(Self::FIELDS);
        if let Value::Object(m) = &mut v {
            m.remove("_use_default_values");
        }
        v.serialize(s)
    }
}
