//! diffusers' `SchedulerMixin.from_config` (configuration_utils `extract_init_dict`), on the typed config:
//!
//! - the class's defaults first; then every key of the saved config that the class reads keeps the saved value
//!   (parsed into its typed field: a bad value is an error naming the field);
//! - keys listed in the saved `_use_default_values` are skipped (they were a previous class's defaults, not the
//!   model's choice), so switching DDIM → Euler gives Euler's own `timestep_spacing` unless the file set one;
//! - keys the class does not read are kept (`SchedulerConfig::hidden`), so a config saved from the new sampler still
//!   carries them for the next switch; those that no registered class reads are reported as warnings (diffusers
//!   logs the same ones: keys of compatible classes pass silently);
//! - keyword arguments (`SamplerOptions::config`, a sampler's preset, a schedule's flags) come last and only for
//!   keys the class reads;
//! - the class keys nothing set are recorded as `_use_default_values`.

use crate::descriptor::Class;
use crate::SchedulerConfig;
use anyhow::{bail, ensure, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// `Class.from_config(saved)` without keyword arguments.
pub fn from_config(class: &Class, saved: &Map<String, Value>) -> Result<SchedulerConfig> {
    let mut cfg = SchedulerConfig::default();
    (class.defaults)(&mut cfg);
    cfg.class_name = class.name.to_string();
    let used_defaults: BTreeSet<&str> = saved
        .get("_use_default_values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut passed = BTreeSet::new();
    for (k, v) in saved {
        if k == "_use_default_values" || k == "_class_name" || used_defaults.contains(k.as_str()) {
            continue;
        }
        if class.keys.contains(&k.as_str()) {
            ensure!(cfg.set_field(k, v)?, "internal: {} lists `{k}`, which SchedulerConfig lacks", class.name);
            passed.insert(k.as_str());
        } else {
            if let Some((_, accepted)) = class.unsupported.iter().find(|(u, _)| *u == k) {
                ensure!(
                    accepted.matches(v),
                    "the scheduler config sets `{k}` = {v}, which sd-rs does not implement for {} (only the default \
                     {accepted:?} is accepted); choose another sampler",
                    class.name
                );
            }
            cfg.hidden.insert(k.clone(), v.clone());
        }
    }
    cfg.defaulted = class.keys.iter().filter(|k| !passed.contains(*k)).map(|k| k.to_string()).collect();
    Ok(cfg)
}

/// A keyword argument of `from_config`: `key` must be one the class reads.
pub fn set_override(cfg: &mut SchedulerConfig, class: &Class, key: &str, value: &Value) -> Result<()> {
    if !class.keys.contains(&key) {
        bail!("{} has no config option `{key}`; its options are: {}", class.name, class.keys.join(", "));
    }
    ensure!(cfg.set_field(key, value)?, "internal: {} lists `{key}`, which SchedulerConfig lacks", class.name);
    cfg.defaulted.remove(key);
    Ok(())
}

/// Run `f` on the config as keyword arguments would: the class keys it changes are no longer defaults.
pub fn apply_tracked(cfg: &mut SchedulerConfig, f: impl FnOnce(&mut SchedulerConfig)) {
    let before = cfg.clone();
    f(cfg);
    let changed: Vec<String> = cfg.defaulted.iter().filter(|k| cfg.field(k) != before.field(k)).cloned().collect();
    for k in changed {
        cfg.defaulted.remove(&k);
    }
}

/// One warning per hidden key that no class `known` accepts (private `_…` keys are metadata and pass).
pub fn unknown_key_warnings(cfg: &SchedulerConfig, known: impl Fn(&str) -> bool) -> Vec<String> {
    cfg.hidden
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !known(k))
        .map(|(k, v)| {
            format!(
                "scheduler config key `{k}` = {v} is not an option of any sampler sd-rs knows; ignored (as diffusers \
                 ignores it)"
            )
        })
        .collect()
}
