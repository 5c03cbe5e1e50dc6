//! Sampler names (A1111 and short forms) → diffusers scheduler class + config overrides, and `build`, which
//! reproduces diffusers' `from_config`: keys the new class shares with the model's saved config keep the saved
//! values, all others take the new class's defaults.

use crate::classes::{classes, Class, COMMON};
use crate::custom::{Ays, AysModel};
use crate::{Scheduler, SchedulerConfig};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One entry of `sd samplers`.
#[derive(Debug, Clone, Serialize)]
pub struct SamplerInfo {
    pub name: &'static str,
    pub a1111: Vec<&'static str>,
    pub diffusers_class: &'static str,
    pub schedules: Vec<&'static str>,
    pub description: &'static str,
}

struct Spec {
    name: &'static str,
    a1111: &'static [&'static str],
    class: &'static str,
    /// Config values that define this sampler on top of the class (e.g. the SDE algorithm).
    overrides: &'static str,
    description: &'static str,
}

fn specs() -> Vec<Spec> {
    vec![
        Spec { name: "euler", a1111: &["Euler"], class: "EulerDiscreteScheduler", overrides: "{}", description: "Euler (first order, deterministic)" },
        Spec { name: "euler-a", a1111: &["Euler a"], class: "EulerAncestralDiscreteScheduler", overrides: "{}", description: "Euler ancestral (adds fresh noise every step)" },
        Spec { name: "ddim", a1111: &["DDIM"], class: "DDIMScheduler", overrides: "{}", description: "DDIM (deterministic with eta = 0)" },
        Spec { name: "dpmpp-2m", a1111: &["DPM++ 2M"], class: "DPMSolverMultistepScheduler", overrides: r#"{"algorithm_type":"dpmsolver++","solver_order":2}"#, description: "DPM-Solver++ second-order multistep" },
        Spec { name: "dpmpp-2m-sde", a1111: &["DPM++ 2M SDE"], class: "DPMSolverMultistepScheduler", overrides: r#"{"algorithm_type":"sde-dpmsolver++","solver_order":2}"#, description: "DPM-Solver++ 2M, stochastic (SDE) variant" },
        Spec { name: "dpmpp-3m-sde", a1111: &["DPM++ 3M SDE"], class: "DPMSolverMultistepScheduler", overrides: r#"{"algorithm_type":"sde-dpmsolver++","solver_order":3}"#, description: "DPM-Solver++ third-order multistep, SDE variant" },
        Spec { name: "heun", a1111: &["Heun"], class: "HeunDiscreteScheduler", overrides: "{}", description: "Heun (second order, two model calls per step)" },
        Spec { name: "lms", a1111: &["LMS"], class: "LMSDiscreteScheduler", overrides: "{}", description: "Linear multistep, order 4" },
        Spec { name: "dpm2", a1111: &["DPM2"], class: "KDPM2DiscreteScheduler", overrides: "{}", description: "DPM-Solver-2 (k-diffusion, two model calls per step)" },
        Spec { name: "dpm2-a", a1111: &["DPM2 a"], class: "KDPM2AncestralDiscreteScheduler", overrides: "{}", description: "DPM-Solver-2 ancestral" },
        Spec { name: "ddpm", a1111: &["DDPM"], class: "DDPMScheduler", overrides: "{}", description: "DDPM ancestral sampling (needs many steps)" },
        Spec { name: "plms", a1111: &["PLMS"], class: "PNDMScheduler", overrides: r#"{"skip_prk_steps":true}"#, description: "Pseudo linear multistep (PNDM without Runge-Kutta warm-up)" },
        Spec { name: "pndm", a1111: &[], class: "PNDMScheduler", overrides: "{}", description: "PNDM as the model config says (Runge-Kutta warm-up unless skip_prk_steps)" },
        Spec { name: "unipc", a1111: &["UniPC"], class: "UniPCMultistepScheduler", overrides: "{}", description: "UniPC predictor-corrector (bh2)" },
        Spec { name: "lcm", a1111: &["LCM"], class: "LCMScheduler", overrides: "{}", description: "Latent consistency sampling (LCM-distilled models / LCM-LoRA, 2-8 steps)" },
        Spec { name: "tcd", a1111: &["TCD"], class: "TCDScheduler", overrides: "{}", description: "Trajectory consistency sampling (TCD models; gamma via eta, pipeline default 0)" },
        Spec { name: "edm-euler", a1111: &["EDM Euler"], class: "EDMEulerScheduler", overrides: "{}", description: "Euler for EDM-parameterised models (Playground v2.5); not for ordinary SD UNets" },
        Spec { name: "deis", a1111: &["DEIS"], class: "DEISMultistepScheduler", overrides: "{}", description: "DEIS multistep (log-rho), second order" },
        Spec { name: "dpmpp-2s", a1111: &[], class: "DPMSolverSinglestepScheduler", overrides: r#"{"algorithm_type":"dpmsolver++","solver_order":2}"#, description: "DPM-Solver++ singlestep, second order (diffusers' closest to A1111 DPM++ 2S a, without the ancestral noise)" },
        Spec { name: "dpmpp-2s-a", a1111: &["DPM++ 2S a"], class: crate::classes::K2SA, overrides: "{}", description: "DPM++ 2S ancestral (k-diffusion; two model calls per step, fresh noise every step)" },
        Spec { name: "dpmpp-sde", a1111: &["DPM++ SDE"], class: "DPMSolverSDEScheduler", overrides: "{}", description: "DPM-Solver++ SDE (two model calls per step, Brownian-tree noise seeded once per run)" },
        Spec { name: "dpm-2m", a1111: &[], class: "DPMSolverMultistepScheduler", overrides: r#"{"algorithm_type":"dpmsolver","solver_order":2,"final_sigmas_type":"sigma_min"}"#, description: "DPM-Solver (noise prediction) second-order multistep" },
    ]
}

/// Schedule names accepted by `build` (`--schedule`) and as A1111 name suffixes.
pub const SCHEDULES: [&str; 7] = ["normal", "karras", "exponential", "beta", "sgm-uniform", "ays", "ays-sdxl"];

fn norm(s: &str) -> String {
    s.trim().to_lowercase().replace(['_', ' '], "-")
}

/// A sampler request: which spec, and the schedule its name implied (e.g. "DPM++ 2M Karras" → karras).
pub struct Parsed {
    pub spec_name: &'static str,
    pub schedule: Option<&'static str>,
}

/// Resolve an A1111 or short sampler name. "default" resolves later from the model's `_class_name`.
pub fn parse_sampler(name: &str) -> Result<Parsed> {
    let n = norm(name);
    let specs = specs();
    let find =
        |key: &str| specs.iter().find(|s| s.name == key || s.a1111.iter().any(|a| norm(a) == key)).map(|s| s.name);
    if let Some(s) = find(&n) {
        return Ok(Parsed { spec_name: s, schedule: None });
    }
    for sched in SCHEDULES {
        for suffix in [format!("-{sched}"), format!("-{}", sched.replace('-', ""))] {
            if let Some(base) = n.strip_suffix(&suffix) {
                if let Some(s) = find(base) {
                    return Ok(Parsed { spec_name: s, schedule: Some(sched) });
                }
            }
        }
    }
    let all = all_names();
    let mut candidates = all.clone();
    for s in &specs {
        for a in s.a1111 {
            candidates.extend(["Karras", "Exponential"].iter().map(|x| format!("{a} {x}")));
        }
    }
    let raw = name.trim().to_lowercase();
    let best = candidates
        .iter()
        .map(|c| ((levenshtein(&n, &norm(c)), levenshtein(&raw, &c.to_lowercase())), c))
        .min_by_key(|(d, _)| *d);
    let hint = match best {
        Some(((d, _), c)) if d <= 4.max(n.len() / 3) => format!("; did you mean {c:?}?"),
        _ => String::new(),
    };
    let valid: Vec<String> = specs
        .iter()
        .map(|s| if s.a1111.is_empty() { s.name.to_string() } else { format!("{} ({})", s.name, s.a1111.join(", ")) })
        .collect();
    bail!(
        "unknown sampler {name:?}{hint} Valid names: {}, or \"default\"; A1111 names take a schedule suffix such as \" Karras\"",
        valid.join(", ")
    )
}

fn all_names() -> Vec<String> {
    specs()
        .iter()
        .flat_map(|s| std::iter::once(s.name.to_string()).chain(s.a1111.iter().map(|a| a.to_string())))
        .collect()
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

/// Build a sampler for a model, like `NewClass.from_config(pipe.scheduler.config)` plus the sampler's flags.
/// `schedule` ("karras" | "exponential" | "beta" | "ays" | "ays-sdxl" | "sgm-uniform" | "normal") overrides the
/// schedule the name implies.
pub fn build(sampler: &str, model_scheduler_config: &Value, schedule: Option<&str>) -> Result<Box<dyn Scheduler>> {
    build_with(sampler, model_scheduler_config, schedule, &json!({}))
}

/// `build` plus explicit config values applied last (e.g. `{"eta": 1.0}` for DDIM, `{"solver_order": 3}`).
pub fn build_with(
    sampler: &str,
    model_cfg: &Value,
    schedule: Option<&str>,
    extra: &Value,
) -> Result<Box<dyn Scheduler>> {
    let model = model_cfg.as_object().ok_or_else(|| anyhow!("the model's scheduler config is not a JSON object"))?;
    let specs = specs();
    let (spec, implied) = if norm(sampler) == "default" {
        let class = model
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("sampler \"default\" needs `_class_name` in the model's scheduler config"))?;
        let spec = specs
            .iter()
            .find(|s| s.class == class && s.overrides == "{}")
            .or_else(|| specs.iter().find(|s| s.class == class));
        (
            spec.ok_or_else(|| {
                anyhow!(
                    "the model's default scheduler class {class} is not supported; choose a sampler ({})",
                    all_names().join(", ")
                )
            })?,
            None,
        )
    } else {
        let p = parse_sampler(sampler)?;
        (
            specs.iter().find(|s| s.name == p.spec_name).ok_or_else(|| anyhow!("internal: spec {}", p.spec_name))?,
            p.schedule,
        )
    };
    let classes = classes();
    let class = classes
        .iter()
        .find(|c| c.name == spec.class)
        .ok_or_else(|| anyhow!("sampler {} ({}) is not implemented", spec.name, spec.class))?;
    let mut cfg = class_config(class, model)?;
    overlay(&mut cfg, spec.overrides)?;
    let schedule = schedule.or(implied).map(norm);
    let ays = apply_schedule(&mut cfg, schedule.as_deref(), spec.name)?;
    for (k, v) in extra.as_object().into_iter().flatten() {
        cfg.insert(k.clone(), v.clone());
    }
    let cfg: SchedulerConfig =
        serde_json::from_value(Value::Object(cfg)).context("scheduler config has a field of the wrong type")?;
    let inner =
        (class.make)(spec.name, cfg).with_context(|| format!("building sampler {} ({})", spec.name, spec.class))?;
    Ok(match ays {
        Some(m) => {
            if !(inner.accepts_custom_sigmas() || inner.accepts_custom_timesteps()) {
                bail!("sampler {} ({}) takes neither custom sigmas nor custom timesteps in diffusers, so AYS schedules are not available for it", spec.name, spec.class);
            }
            Box::new(Ays::new(inner, m))
        }
        None => inner,
    })
}

/// The class defaults with the model's values for every key the class knows.
fn class_config(class: &Class, model: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut cfg: Map<String, Value> = serde_json::from_str(&format!("{{{COMMON},{}", &class.defaults[1..]))?;
    for (k, v) in model {
        if cfg.contains_key(k) {
            cfg.insert(k.clone(), v.clone());
        }
    }
    cfg.insert("_class_name".into(), json!(class.name));
    Ok(cfg)
}

fn overlay(cfg: &mut Map<String, Value>, json_obj: &str) -> Result<()> {
    let o: Map<String, Value> = serde_json::from_str(json_obj)?;
    for (k, v) in o {
        cfg.insert(k, v);
    }
    Ok(())
}

fn apply_schedule(cfg: &mut Map<String, Value>, schedule: Option<&str>, sampler: &str) -> Result<Option<AysModel>> {
    let Some(s) = schedule else { return Ok(None) };
    let flag_keys = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"];
    let set_flag = |cfg: &mut Map<String, Value>, key: Option<&str>| -> Result<()> {
        if let Some(k) = key {
            if !cfg.contains_key(k) {
                bail!("sampler {sampler} has no {s} schedule in diffusers (its class has no `{k}` option)");
            }
        }
        for f in flag_keys {
            if cfg.contains_key(f) {
                cfg.insert(f.into(), json!(Some(f) == key));
            }
        }
        Ok(())
    };
    match s {
        "normal" | "default" => set_flag(cfg, None)?,
        "karras" => set_flag(cfg, Some("use_karras_sigmas"))?,
        "exponential" => set_flag(cfg, Some("use_exponential_sigmas"))?,
        "beta" => set_flag(cfg, Some("use_beta_sigmas"))?,
        "sgm-uniform" => {
            set_flag(cfg, None)?;
            let class = cfg.get("_class_name").and_then(Value::as_str).unwrap_or_default();
            if !cfg.contains_key("timestep_spacing") || SPACING_IGNORED.contains(&class) {
                bail!("sampler {sampler} has no timestep_spacing option, so sgm-uniform is not available");
            }
            cfg.insert("timestep_spacing".into(), json!("trailing"));
        }
        "ays" | "ays-sd" | "ays-sd1" => {
            set_flag(cfg, None)?;
            return Ok(Some(AysModel::Sd));
        }
        "ays-sdxl" => {
            set_flag(cfg, None)?;
            return Ok(Some(AysModel::Sdxl));
        }
        other => bail!("unknown schedule {other:?}; expected one of {}", SCHEDULES.join(", ")),
    }
    Ok(None)
}

/// Classes that carry `timestep_spacing` in their config but never read it (consistency-model timesteps).
const SPACING_IGNORED: [&str; 2] = ["LCMScheduler", "TCDScheduler"];

/// Classes whose diffusers `set_timesteps` takes custom sigmas or timesteps (what AYS needs).
const AYS_CLASSES: [&str; 4] =
    ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler", "DDPMScheduler"];

/// Every sampler, for `sd samplers`.
pub fn list() -> Vec<SamplerInfo> {
    let classes = classes();
    specs()
        .into_iter()
        .filter(|s| classes.iter().any(|c| c.name == s.class))
        .map(|s| {
            let class = classes.iter().find(|c| c.name == s.class);
            let has = |k: &str| class.is_some_and(|c| c.defaults.contains(&format!("\"{k}\"")));
            let mut schedules = vec!["normal"];
            for (k, n) in [
                ("use_karras_sigmas", "karras"),
                ("use_exponential_sigmas", "exponential"),
                ("use_beta_sigmas", "beta"),
                ("timestep_spacing", "sgm-uniform"),
            ] {
                if has(k) && !(n == "sgm-uniform" && SPACING_IGNORED.contains(&s.class)) {
                    schedules.push(n);
                }
            }
            if class.is_some_and(|c| AYS_CLASSES.contains(&c.name)) {
                schedules.extend(["ays", "ays-sdxl"]);
            }
            SamplerInfo {
                name: s.name,
                a1111: s.a1111.to_vec(),
                diffusers_class: s.class,
                schedules,
                description: s.description,
            }
        })
        .collect()
}
