//! What a request asks for: a `SamplerChoice` (which sampler, which `Schedule`) and its `SamplerOptions`, parsed
//! from the names users write (AUTOMATIC1111's "DPM++ 2M Karras", short "dpmpp-2m", "default" for the model's own
//! class) and written back the same way, so requests, metadata and JSON APIs carry one typed value.

use crate::descriptor::Descriptor;
use crate::registry::{self, SAMPLERS};
use crate::Scheduler;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// The sigma/timestep schedule a sampler runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The class's own spacing (no re-spacing flag set).
    Normal,
    /// Karras et al. 2022 (ρ = 7) over the model's sigma range (`use_karras_sigmas`).
    Karras,
    /// Log-linear sigmas (`use_exponential_sigmas`).
    Exponential,
    /// Beta-distribution sigmas, α = β = 0.6 (`use_beta_sigmas`).
    Beta,
    /// "trailing" timestep spacing, A1111's SGM Uniform (`timestep_spacing`).
    SgmUniform,
    /// Align Your Steps, the SD 1.5 list (custom sigmas or timesteps).
    Ays,
    /// Align Your Steps, the SDXL list.
    AysSdxl,
}

impl Schedule {
    pub const ALL: [Schedule; 7] = [
        Schedule::Normal,
        Schedule::Karras,
        Schedule::Exponential,
        Schedule::Beta,
        Schedule::SgmUniform,
        Schedule::Ays,
        Schedule::AysSdxl,
    ];

    /// The canonical short name ("sgm-uniform").
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Normal => "normal",
            Schedule::Karras => "karras",
            Schedule::Exponential => "exponential",
            Schedule::Beta => "beta",
            Schedule::SgmUniform => "sgm-uniform",
            Schedule::Ays => "ays",
            Schedule::AysSdxl => "ays-sdxl",
        }
    }

    /// Every accepted spelling, normalised (lower case, `-` for spaces and `_`).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Schedule::Normal => &["normal"],
            Schedule::Karras => &["karras"],
            Schedule::Exponential => &["exponential"],
            Schedule::Beta => &["beta"],
            Schedule::SgmUniform => &["sgm-uniform", "sgmuniform"],
            Schedule::Ays => &["ays", "ays-sd", "ays-sd1", "align-your-steps"],
            Schedule::AysSdxl => &["ays-sdxl", "aysdxl", "align-your-steps-sdxl"],
        }
    }

    /// How a choice's name ends with it ("DPM++ 2M Karras", "Euler SGM Uniform").
    pub fn suffix(self) -> &'static str {
        match self {
            Schedule::Normal => "Normal",
            Schedule::Karras => "Karras",
            Schedule::Exponential => "Exponential",
            Schedule::Beta => "Beta",
            Schedule::SgmUniform => "SGM Uniform",
            Schedule::Ays => "AYS",
            Schedule::AysSdxl => "AYS SDXL",
        }
    }

    /// A1111's "Schedule type" label for image metadata. `None` for `Normal`: diffusers' own spacing is what A1111
    /// records as no schedule type ("Automatic"); A1111's "Normal" is a different schedule.
    pub fn a1111_label(self) -> Option<&'static str> {
        match self {
            Schedule::Normal => None,
            Schedule::Karras => Some("Karras"),
            Schedule::Exponential => Some("Exponential"),
            Schedule::Beta => Some("Beta"),
            Schedule::SgmUniform => Some("SGM Uniform"),
            Schedule::Ays | Schedule::AysSdxl => Some("Align Your Steps"),
        }
    }

    /// AUTOMATIC1111's `scheduler` API field (its names or its labels): "automatic" (or empty) is `None`, the
    /// sampler's own schedule. A1111 schedulers sd-rs cannot reproduce exactly are refused by name.
    pub fn from_a1111(s: &str) -> Result<Option<Schedule>> {
        let n = norm(s);
        Ok(Some(match n.as_str() {
            "" | "automatic" => return Ok(None),
            "karras" => Schedule::Karras,
            "exponential" => Schedule::Exponential,
            "sgm-uniform" | "sgmuniform" => Schedule::SgmUniform,
            "beta" => Schedule::Beta,
            "align-your-steps" => Schedule::Ays,
            _ if A1111_UNSUPPORTED.contains(&n.as_str()) => bail!(
                "A1111 scheduler {s:?} is not supported: sd-rs cannot reproduce it exactly (unsupported: {}); use \
                 automatic, karras, exponential, sgm_uniform, beta or align_your_steps",
                A1111_UNSUPPORTED_NAMES.join(", ")
            ),
            _ => bail!(
                "unknown A1111 scheduler {s:?}; expected automatic, karras, exponential, sgm_uniform, beta or \
                 align_your_steps"
            ),
        }))
    }

    /// The `SchedulerConfig` flag this schedule turns on, if it is one.
    pub fn config_key(self) -> Option<&'static str> {
        match self {
            Schedule::Karras => Some("use_karras_sigmas"),
            Schedule::Exponential => Some("use_exponential_sigmas"),
            Schedule::Beta => Some("use_beta_sigmas"),
            Schedule::SgmUniform => Some("timestep_spacing"),
            Schedule::Normal | Schedule::Ays | Schedule::AysSdxl => None,
        }
    }
}

/// A1111 schedulers (API names, normalised) whose sigmas differ from anything sd-rs computes.
const A1111_UNSUPPORTED: [&str; 10] = [
    "uniform",
    "polyexponential",
    "kl-optimal",
    "simple",
    "normal",
    "ddim",
    "turbo",
    "align-your-steps-gits",
    "align-your-steps-11",
    "align-your-steps-32",
];
const A1111_UNSUPPORTED_NAMES: [&str; 10] = [
    "uniform",
    "polyexponential",
    "kl_optimal",
    "simple",
    "normal",
    "ddim",
    "turbo",
    "align_your_steps_GITS",
    "align_your_steps_11",
    "align_your_steps_32",
];

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let n = norm(s);
        if let Some(sch) = Schedule::ALL.into_iter().find(|x| x.aliases().contains(&n.as_str())) {
            return Ok(sch);
        }
        let names: Vec<&str> = Schedule::ALL.iter().map(|x| x.name()).collect();
        let hint = did_you_mean(&n, &s.trim().to_lowercase(), names.iter().map(|x| x.to_string()));
        bail!("unknown schedule {s:?}{hint}; expected one of {}", names.join(", "))
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// Which sampler: one from the table, or the model's own scheduler class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// "default": the class in the model's `scheduler_config.json`, with its saved settings.
    ModelDefault,
    Named(&'static Descriptor),
}

/// A sampler and schedule as a request names them. `FromStr` takes what users write ("DPM++ 2M Karras",
/// "dpmpp-2m", "euler-a-sgm-uniform", "default"); `Display` writes the A1111 form, which parses back to the same
/// value; serde uses that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerChoice {
    pub sampler: Sampler,
    /// `None`: the sampler's own schedule (whatever the model's config sets).
    pub schedule: Option<Schedule>,
}

impl Default for SamplerChoice {
    fn default() -> Self {
        Self { sampler: Sampler::ModelDefault, schedule: None }
    }
}

impl SamplerChoice {
    pub fn new(d: &'static Descriptor) -> Self {
        Self { sampler: Sampler::Named(d), schedule: None }
    }

    /// This choice with `schedule` in place of the one its name implied, when one is given (how `--schedule`
    /// combines with `--sampler "DPM++ 2M Karras"`); `None` keeps the name's.
    pub fn with_schedule(self, schedule: Option<Schedule>) -> Self {
        Self { schedule: schedule.or(self.schedule), ..self }
    }

    /// The ready sampler for a model: `model_config` is its saved `scheduler_config.json`, read the way diffusers'
    /// `from_config` reads it; `opts` are the per-request settings (eta, explicit config values).
    pub fn build(&self, model_config: &Value, opts: &SamplerOptions) -> Result<Box<dyn Scheduler>> {
        registry::build(self, model_config, opts)
    }
}

impl fmt::Display for SamplerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.sampler {
            Sampler::ModelDefault => "default",
            Sampler::Named(d) => d.label(),
        };
        match self.schedule {
            None => f.write_str(base),
            Some(s) => write!(f, "{base} {}", s.suffix()),
        }
    }
}

impl FromStr for SamplerChoice {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
        let n = norm(name);
        if let Some(sampler) = find(&n) {
            return Ok(Self { sampler, schedule: None });
        }
        for sch in Schedule::ALL {
            for alias in sch.aliases() {
                if let Some(sampler) = n.strip_suffix(&format!("-{alias}")).and_then(find) {
                    return Ok(Self { sampler, schedule: Some(sch) });
                }
            }
        }
        let mut candidates: Vec<String> = all_names();
        for d in SAMPLERS {
            for a in d.a1111 {
                candidates.extend(["Karras", "Exponential"].iter().map(|x| format!("{a} {x}")));
            }
        }
        let hint = did_you_mean(&n, &name.trim().to_lowercase(), candidates.into_iter());
        let valid: Vec<String> =
            SAMPLERS
                .iter()
                .map(|d| {
                    if d.a1111.is_empty() {
                        d.name.to_string()
                    } else {
                        format!("{} ({})", d.name, d.a1111.join(", "))
                    }
                })
                .collect();
        bail!(
            "unknown sampler {name:?}{hint} Valid names: {}, or \"default\"; A1111 names take a schedule suffix \
             such as \" Karras\"",
            valid.join(", ")
        )
    }
}

impl Serialize for SamplerChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SamplerChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// Per-request sampler settings besides the choice. As JSON: `{"eta": 0.5, "solver_order": 3}` (every key but
/// `eta` goes to `config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerOptions {
    /// η for the samplers that declare `SamplerOption::Eta`; for the others it is ignored with a warning, as
    /// diffusers ignores `eta` for a scheduler whose `step` does not take it.
    pub eta: Option<f64>,
    /// Config values by diffusers field name, applied after the model's config and the sampler's own settings, as
    /// keyword arguments to `from_config` (e.g. `solver_order`); a key the sampler's class lacks is an error.
    #[serde(flatten)]
    pub config: Map<String, Value>,
}

/// Lower case, `-` for spaces and underscores.
pub(crate) fn norm(s: &str) -> String {
    s.trim().to_lowercase().replace(['_', ' '], "-")
}

fn find(n: &str) -> Option<Sampler> {
    if n == "default" {
        return Some(Sampler::ModelDefault);
    }
    SAMPLERS.iter().find(|d| d.name == n || d.a1111.iter().any(|a| norm(a) == n)).copied().map(Sampler::Named)
}

fn all_names() -> Vec<String> {
    SAMPLERS
        .iter()
        .flat_map(|d| std::iter::once(d.name.to_string()).chain(d.a1111.iter().map(|a| a.to_string())))
        .collect()
}

/// "; did you mean \"X\"?" for the closest candidate (by normalised, then raw, edit distance), if close enough.
fn did_you_mean(n: &str, raw: &str, candidates: impl Iterator<Item = String>) -> String {
    let best = candidates
        .map(|c| ((levenshtein(n, &norm(&c)), levenshtein(raw, &c.to_lowercase())), c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some(((d, _), c)) if d <= 4.max(n.len() / 3) => format!("; did you mean {c:?}?"),
        _ => String::new(),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
