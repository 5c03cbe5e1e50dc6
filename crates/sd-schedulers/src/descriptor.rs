//! What a sampler file declares next to its code: its `Class` (the diffusers scheduler class it reproduces: the
//! config keys that class reads and their defaults) and one `Descriptor` per sampler built on it (names, the
//! settings that make it that sampler, the schedules and options it takes, its constructor). `samplers::SAMPLERS`
//! lists the descriptors (one line per sampler file); everything else (`sd samplers`, name parsing, `from_config`,
//! the contract test) reads them from there.

use crate::choice::Schedule;
use crate::{Scheduler, SchedulerConfig};
use anyhow::Result;
use serde_json::Value;

/// A diffusers scheduler class as sd-rs reproduces it, or a k-diffusion sampler given the same shape (named
/// "k-diffusion …", so it never matches a model's `_class_name`).
pub struct Class {
    /// diffusers' class name (`_class_name` in a saved `scheduler_config.json`).
    pub name: &'static str,
    /// The `__init__` arguments sd-rs implements: the keys `from_config` takes from a saved config. Each is a
    /// `SchedulerConfig` field (checked by the contract test).
    pub keys: &'static [&'static str],
    /// The class's `__init__` defaults where they differ from `SchedulerConfig::default()`.
    pub defaults: fn(&mut SchedulerConfig),
    /// `__init__` arguments sd-rs does not implement, with the one value it accepts (diffusers' default, which
    /// leaves the result unchanged). Any other value in a saved config is an error rather than a silent difference.
    pub unsupported: &'static [(&'static str, Lit)],
}

/// A JSON literal in a `const` (the accepted value of an unimplemented option).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'static str),
}

impl Lit {
    pub fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Lit::Null, Value::Null) => true,
            (Lit::Bool(b), Value::Bool(x)) => b == x,
            (Lit::Num(n), Value::Number(x)) => x.as_f64() == Some(*n),
            (Lit::Str(s), Value::String(x)) => s == x,
            _ => false,
        }
    }
}

/// A per-request knob a sampler takes besides the model's config (`SamplerOptions` carries the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerOption {
    /// How much fresh noise a step adds: DDIM's η, TCD's γ, the k-diffusion SDE samplers' η.
    Eta,
}

impl SamplerOption {
    /// The command-line flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            SamplerOption::Eta => "--eta",
        }
    }
}

/// Which models a sampler can drive. The two kinds integrate different forward processes, so a sampler of one kind
/// run on the other kind's model produces noise rather than a picture; pipelines refuse the pairing up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Models {
    /// UNet models predicting ε, v or x₀ over a variance-preserving schedule (SD 1.x, SD 2.x, SDXL).
    #[serde(rename = "unet")]
    Unet,
    /// Rectified-flow models predicting the velocity ε − x₀ (SD 3 / 3.5).
    #[serde(rename = "flow")]
    Flow,
}

impl Models {
    /// What the models are, for messages.
    pub fn kind(self) -> &'static str {
        match self {
            Models::Unet => "UNet",
            Models::Flow => "flow-matching",
        }
    }

    /// The model families this kind covers, as `sd samplers` lists them.
    pub fn families(self) -> &'static str {
        match self {
            Models::Unet => "sd1 sd2 sdxl",
            Models::Flow => "sd3",
        }
    }
}

/// Builds the sampler from its resolved config.
pub type Build = fn(&'static Descriptor, SchedulerConfig) -> Result<Box<dyn Scheduler>>;

/// One sampler as users pick it.
pub struct Descriptor {
    /// Short name, e.g. "dpmpp-2m-sde".
    pub name: &'static str,
    /// AUTOMATIC1111's names (the first is the one written into image metadata); empty when A1111 has none.
    pub a1111: &'static [&'static str],
    pub class: &'static Class,
    /// What makes this sampler on top of its class (e.g. DPM++ 2M SDE = the multistep class with the SDE
    /// algorithm), applied over the model's values like keyword arguments to diffusers' `from_config`.
    pub preset: fn(&mut SchedulerConfig),
    /// The schedules it can run (`Schedule::Normal` always; the others where its class has the option).
    pub schedules: &'static [Schedule],
    pub options: &'static [SamplerOption],
    /// The models it drives (`registry::check_models` refuses the others).
    pub models: Models,
    /// One line for `sd samplers`.
    pub description: &'static str,
    pub build: Build,
}

/// For descriptors that are their class as it stands.
pub const NO_PRESET: fn(&mut SchedulerConfig) = |_| {};

impl Descriptor {
    /// The name A1111 writes into image metadata ("DPM++ 2M"), else the short name.
    pub fn label(&self) -> &'static str {
        self.a1111.first().copied().unwrap_or(self.name)
    }

    /// Whether a resolved config already is this sampler (its preset changes nothing), which is how the sampler a
    /// model's own config describes is recognised.
    pub fn describes(&self, cfg: &SchedulerConfig) -> bool {
        let mut c = cfg.clone();
        (self.preset)(&mut c);
        c == *cfg
    }
}

/// Descriptors are statics: equal when they are the same sampler.
impl PartialEq for Descriptor {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Descriptor {}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Descriptor({})", self.name)
    }
}

/// Box a sampler constructor's result (for `Descriptor::build`).
pub fn boxed<S: Scheduler + 'static>(r: Result<S>) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(r?))
}
