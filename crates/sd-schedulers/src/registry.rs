//! Lookups in the sampler table (`samplers::SAMPLERS`, one line per sampler file) and `build`, which turns a
//! `SamplerChoice` plus a model's saved `scheduler_config.json` into a ready sampler.

use crate::choice::{Sampler, SamplerChoice, SamplerOptions, Schedule};
use crate::config::TimestepSpacing;
use crate::custom::{Ays, AysModel};
use crate::descriptor::{Descriptor, Models, SamplerOption};
use crate::from_config::{apply_tracked, from_config, set_override, unknown_key_warnings};
pub use crate::samplers::SAMPLERS;
use crate::{Scheduler, SchedulerConfig};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

/// A sampler by short name.
pub fn lookup(name: &str) -> Option<&'static Descriptor> {
    SAMPLERS.iter().copied().find(|d| d.name == name)
}

/// Whether some registered class reads (or knowingly refuses) this config key.
pub fn known_key(key: &str) -> bool {
    SAMPLERS.iter().any(|d| d.class.keys.contains(&key) || d.class.unsupported.iter().any(|(k, _)| *k == key))
}

/// `SamplerChoice::build`.
pub fn build(choice: &SamplerChoice, model_config: &Value, opts: &SamplerOptions) -> Result<Box<dyn Scheduler>> {
    let saved = model_config.as_object().ok_or_else(|| anyhow!("the model's scheduler config is not a JSON object"))?;
    let (d, mut cfg) = match choice.sampler {
        Sampler::Named(d) => {
            let mut cfg = from_config(d.class, saved)?;
            apply_tracked(&mut cfg, d.preset);
            (d, cfg)
        }
        Sampler::ModelDefault => model_default(saved)?,
    };
    for (k, v) in &opts.config {
        set_override(&mut cfg, d.class, k, v).with_context(|| format!("sampler {}", d.name))?;
    }
    let schedule = match choice.schedule {
        Some(s) => {
            apply_schedule(d, &mut cfg, s)?;
            Some(s)
        }
        None => flag_schedule(&cfg),
    };
    let mut warnings = unknown_key_warnings(&cfg, known_key);
    if let Some(eta) = opts.eta {
        if d.options.contains(&SamplerOption::Eta) {
            ensure!(eta.is_finite() && eta >= 0.0, "eta must be a finite number ≥ 0 (got {eta})");
            cfg.eta = eta;
        } else {
            let with: Vec<&str> =
                SAMPLERS.iter().filter(|x| x.options.contains(&SamplerOption::Eta)).map(|x| x.name).collect();
            warnings.push(format!(
                "eta {eta} ignored: sampler {} takes none (samplers with eta: {})",
                d.name,
                with.join(", ")
            ));
        }
    }
    let inner = (d.build)(d, cfg).with_context(|| format!("building sampler {} ({})", d.name, d.class.name))?;
    let mut s: Box<dyn Scheduler> = match schedule {
        Some(Schedule::Ays) | Some(Schedule::AysSdxl) => {
            ensure!(
                inner.accepts_custom_sigmas() || inner.accepts_custom_timesteps(),
                "internal: sampler {} declares AYS but takes neither custom sigmas nor custom timesteps",
                d.name
            );
            let model = if schedule == Some(Schedule::Ays) { AysModel::Sd } else { AysModel::Sdxl };
            Box::new(Ays::new(inner, model))
        }
        _ => inner,
    };
    let st = s.state_mut();
    st.schedule = schedule;
    st.warnings = warnings;
    Ok(s)
}

/// "default": the model's class as its config stands (no sampler preset), reported as the first sampler of that
/// class whose preset the config already satisfies (else the class's first sampler).
fn model_default(saved: &Map<String, Value>) -> Result<(&'static Descriptor, SchedulerConfig)> {
    let class = saved
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("sampler \"default\" needs `_class_name` in the model's scheduler config"))?;
    let of_class: Vec<&'static Descriptor> = SAMPLERS.iter().copied().filter(|d| d.class.name == class).collect();
    let Some(first) = of_class.first() else {
        let names: Vec<&str> = SAMPLERS.iter().map(|d| d.name).collect();
        bail!("the model's default scheduler class {class} is not supported; choose a sampler ({})", names.join(", "))
    };
    let cfg = from_config(first.class, saved)?;
    let d = of_class.iter().copied().find(|d| d.describes(&cfg)).unwrap_or(first);
    Ok((d, cfg))
}

/// Set the config the way `schedule` needs, if the sampler declares it.
fn apply_schedule(d: &Descriptor, cfg: &mut SchedulerConfig, s: Schedule) -> Result<()> {
    if !d.schedules.contains(&s) {
        let has: Vec<&str> = d.schedules.iter().map(|x| x.name()).collect();
        bail!("sampler {} ({}) has no {s} schedule in sd-rs; it takes: {}", d.name, d.class.name, has.join(", "));
    }
    if let Some(k) = s.config_key() {
        ensure!(d.class.keys.contains(&k), "internal: sampler {} declares {s} but its class lacks `{k}`", d.name);
    }
    let keys = d.class.keys;
    apply_tracked(cfg, |c| {
        // every schedule replaces the model's re-spacing flag (a "normal" request undoes a saved Karras flag)
        if keys.contains(&"use_karras_sigmas") {
            c.use_karras_sigmas = s == Schedule::Karras;
        }
        if keys.contains(&"use_exponential_sigmas") {
            c.use_exponential_sigmas = s == Schedule::Exponential;
        }
        if keys.contains(&"use_beta_sigmas") {
            c.use_beta_sigmas = s == Schedule::Beta;
        }
        if s == Schedule::SgmUniform {
            c.timestep_spacing = TimestepSpacing::Trailing;
        }
    });
    Ok(())
}

/// The schedule a config's own flags select (a model saved with `use_karras_sigmas` runs Karras).
fn flag_schedule(cfg: &SchedulerConfig) -> Option<Schedule> {
    if cfg.use_karras_sigmas {
        Some(Schedule::Karras)
    } else if cfg.use_exponential_sigmas {
        Some(Schedule::Exponential)
    } else if cfg.use_beta_sigmas {
        Some(Schedule::Beta)
    } else {
        None
    }
}

/// Refuse a sampler on a model it cannot drive: `models` is what the model is (`Models::Unet` for SD1/SD2/SDXL,
/// `Models::Flow` for SD3), `family` its name for the message, which lists the samplers that do apply.
pub fn check_models(d: &Descriptor, models: Models, family: &str) -> Result<()> {
    if d.models == models {
        return Ok(());
    }
    let fitting: Vec<&str> = SAMPLERS.iter().filter(|x| x.models == models).map(|x| x.name).collect();
    bail!(
        "sampler {} is for {} models ({}), not for this {family} model ({}: {}); samplers for it: {} (or \"default\")",
        d.name,
        d.models.kind(),
        d.models.families(),
        models.kind(),
        models.families(),
        fitting.join(", ")
    )
}

/// One entry of `sd samplers`.
#[derive(Debug, Clone, Serialize)]
pub struct SamplerInfo {
    pub name: &'static str,
    pub a1111: Vec<&'static str>,
    pub diffusers_class: &'static str,
    pub schedules: Vec<&'static str>,
    /// Per-request options besides the schedule, as command-line flags ("--eta").
    pub options: Vec<&'static str>,
    /// The model families it drives ("sd1 sd2 sdxl" or "sd3").
    pub models: &'static str,
    pub description: &'static str,
}

/// Every sampler, for `sd samplers`.
pub fn list() -> Vec<SamplerInfo> {
    SAMPLERS
        .iter()
        .map(|d| SamplerInfo {
            name: d.name,
            a1111: d.a1111.to_vec(),
            diffusers_class: d.class.name,
            schedules: d.schedules.iter().map(|s| s.name()).collect(),
            options: d.options.iter().map(|o| o.flag()).collect(),
            models: d.models.families(),
            description: d.description,
        })
        .collect()
}
