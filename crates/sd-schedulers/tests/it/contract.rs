//! The contract every registered sampler keeps, checked for each entry of `SAMPLERS` (so a new table line is
//! checked without further work). Anchored on diffusers' `SchedulerCommonTest` (tests/schedulers/test_schedulers.py):
//!
//! - the descriptor is consistent with its class and with what the built sampler accepts (schedules, AYS);
//! - `set_timesteps`: counts, ranges, ordering, repeatability (`test_timesteps` / `check_over_configs`), also over a
//!   sweep of configs (prediction type × spacing × beta schedule, zero-SNR), never a panic;
//! - `add_noise` (`test_add_noise_device`): shape and dtype kept, linear, more noise at earlier timesteps;
//! - begin index (`set_begin_index`): starting mid-schedule equals finding the place by timestep;
//! - step output shapes and dtypes in float32 and bfloat16 (`test_step_shape`), the same result for the same seed;
//! - save / load (`test_from_save_pretrained`): a config saved from the sampler rebuilds the same sampler, and
//!   switching to any other sampler and back restores it (`test_compatibles`);
//! - full-loop parity: every sampler has reference fixture cases (scripts/fixtures/gen_1*_schedulers*.py), replayed
//!   here at the family's tolerance (1e-5 relative per step in float32, 2.5e-2 in bfloat16).
//!
//! The flow-matching samplers (`Models::Flow`) run the same checks from the same SD1 config (their classes ignore its
//! beta keys): their timesteps are σ·T rather than training indices, and a switch between flow-dpmpp-2m, whose
//! `prediction_type` is `flow_prediction`, and a UNet class that reads `prediction_type` is refused.
use crate::common;

use sd_core::TorchGenerator;
use sd_schedulers::{
    img2img_timesteps, Descriptor, Models, Sampler, SamplerChoice, SamplerOptions, Schedule, Scheduler,
    SchedulerConfig, SAMPLERS,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor};

const SHAPE: [i64; 4] = [2, 4, 4, 4];

fn sd1() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1/scheduler/scheduler_config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (gen_00)"))).unwrap()
}

fn build(d: &'static Descriptor, cfg: &Value, schedule: Option<Schedule>) -> anyhow::Result<Box<dyn Scheduler>> {
    SamplerChoice::new(d).with_schedule(schedule).build(cfg, &SamplerOptions::default())
}

fn sd1_sampler(d: &'static Descriptor) -> Box<dyn Scheduler> {
    build(d, &sd1(), None).unwrap_or_else(|e| panic!("{}: {e:#}", d.name))
}

/// A deterministic stand-in for the UNet (per-channel affine in the input plus a timestep term), as the fixtures use.
fn model(x_in: &Tensor, t: f64, kind: Kind) -> Tensor {
    let a = Tensor::from_slice(&[0.9f32, 0.7, 1.1, 0.5]).view([1, -1, 1, 1]);
    let b = Tensor::from_slice(&[0.1f32, -0.2, 0.05, 0.3]).view([1, -1, 1, 1]);
    (x_in.to_kind(Kind::Float) * a + b * (t / 1000.0)).to_kind(kind)
}

fn finite(t: &Tensor) -> bool {
    t.to_kind(Kind::Float).isfinite().all().int64_value(&[]) == 1
}

/// Run the whole schedule in `kind`; every state after a step, checked for shape, dtype and finiteness.
fn run_loop(s: &mut dyn Scheduler, steps: usize, seed: u64, kind: Kind, what: &str) -> Vec<Tensor> {
    let out = run_loop_unchecked(s, steps, seed, kind, what);
    for (i, x) in out.iter().enumerate() {
        assert!(finite(x), "{what}: non-finite output at step {i}");
    }
    out
}

/// `run_loop` without the finiteness check.
fn run_loop_unchecked(s: &mut dyn Scheduler, steps: usize, seed: u64, kind: Kind, what: &str) -> Vec<Tensor> {
    s.set_timesteps(steps, Device::Cpu).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let mut g = TorchGenerator::new(seed);
    let mut x = g.randn(&SHAPE, kind, Device::Cpu) * s.init_noise_sigma();
    let mut out = vec![];
    for t in s.timesteps().to_vec() {
        let x_in = s.scale_model_input(&x, t).unwrap_or_else(|e| panic!("{what}: scale at {t}: {e:#}"));
        assert_eq!((x_in.size(), x_in.kind()), (SHAPE.to_vec(), kind), "{what}: scale_model_input at {t}");
        x = s.step(&model(&x_in, t, kind), t, &x, &mut g).unwrap_or_else(|e| panic!("{what}: step at {t}: {e:#}"));
        assert_eq!((x.size(), x.kind()), (SHAPE.to_vec(), kind), "{what}: step output at {t}");
        out.push(x.shallow_clone());
    }
    out
}

/// Samplers whose timesteps are not training indices in [0, T): EDM's ¼·ln σ, flow matching's σ·T (which starts
/// at T itself; flow-dpmpp-2m truncates it to an integer).
fn continuous_timesteps(d: &Descriptor) -> bool {
    d.name == "edm-euler" || d.models == Models::Flow
}

fn same(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equal(y))
}

#[test]
fn descriptors_are_consistent_with_their_class() {
    let mut names = BTreeSet::new();
    for d in SAMPLERS {
        let what = d.name;
        assert!(names.insert(d.name), "{what}: duplicate name");
        for a in d.a1111 {
            assert!(names.insert(a), "{what}: A1111 name {a} used twice");
            let c: SamplerChoice = a.parse().unwrap();
            assert_eq!(c.sampler, Sampler::Named(d), "{what}: {a}");
        }
        assert_eq!(d.name.parse::<SamplerChoice>().unwrap().sampler, Sampler::Named(d));
        for k in d.class.keys {
            assert!(SchedulerConfig::FIELDS.contains(k), "{what}: class key `{k}` is not a SchedulerConfig field");
        }
        for (k, _) in d.class.unsupported {
            assert!(!d.class.keys.contains(k), "{what}: `{k}` is both implemented and unsupported");
        }
        assert!(d.schedules.contains(&Schedule::Normal), "{what}: every sampler runs its class's own schedule");
        let s = sd1_sampler(d);
        assert_eq!(s.descriptor(), *d);
        assert_eq!(s.config().class_name, d.class.name, "{what}");
        for sch in Schedule::ALL {
            let r = build(d, &sd1(), Some(sch));
            if d.schedules.contains(&sch) {
                let s = r.unwrap_or_else(|e| panic!("{what} {sch}: {e:#}"));
                assert_eq!(s.schedule(), Some(sch), "{what}");
                if let Some(k) = sch.config_key() {
                    assert!(d.class.keys.contains(&k), "{what}: declares {sch} but its class lacks `{k}`");
                }
            } else {
                let e = format!("{:#}", r.err().unwrap_or_else(|| panic!("{what}: undeclared {sch} was accepted")));
                assert!(e.contains(sch.name()), "{what} {sch}: {e}");
            }
        }
        let ays = d.schedules.contains(&Schedule::Ays) || d.schedules.contains(&Schedule::AysSdxl);
        assert_eq!(ays, s.accepts_custom_sigmas() || s.accepts_custom_timesteps(), "{what}: AYS needs custom lists");
    }
}

#[test]
fn timesteps_are_counted_ordered_and_repeatable() {
    for d in SAMPLERS {
        for n in [1usize, 2, 5, 10, 25, 50] {
            let what = format!("{} n={n}", d.name);
            let mut s = sd1_sampler(d);
            s.set_timesteps(n, Device::Cpu).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let ts = s.timesteps().to_vec();
            // PLMS repeats one timestep (its second step re-evaluates the first's)
            let most = n * s.order() + 1;
            assert!(ts.len() >= n && ts.len() <= most, "{what}: {} timesteps, order {}", ts.len(), s.order());
            assert!(ts.iter().all(|t| t.is_finite()), "{what}: {ts:?}");
            if !continuous_timesteps(d) {
                assert!(ts.iter().all(|t| (0.0..1000.0).contains(t)), "{what}: {ts:?}");
            }
            let max = ts.iter().cloned().fold(f64::MIN, f64::max);
            assert_eq!(ts[0], max, "{what}: the loop starts at the noisiest timestep: {ts:?}");
            let sig = s.sigmas().to_vec();
            if !sig.is_empty() {
                assert!(sig.iter().all(|x| x.is_finite() && *x >= 0.0), "{what}: {sig:?}");
                assert!(sig.windows(2).all(|w| w[1] <= w[0]), "{what}: sigmas rise: {sig:?}");
            }
            assert!(s.init_noise_sigma().is_finite() && s.init_noise_sigma() > 0.0, "{what}");
            s.set_timesteps(n, Device::Cpu).unwrap();
            assert_eq!(s.timesteps(), ts.as_slice(), "{what}: set_timesteps is not repeatable");
            assert_eq!(s.sigmas(), sig.as_slice(), "{what}");
        }
    }
}

/// diffusers' `check_over_configs`: every sampler builds or refuses each config cleanly, and runs what it builds.
#[test]
fn config_sweep_builds_or_refuses_and_runs_finite() {
    for d in SAMPLERS {
        for pred in ["epsilon", "v_prediction", "sample"] {
            for spacing in ["leading", "linspace", "trailing"] {
                for betas in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
                    for train in [1000, 100] {
                        let mut cfg = sd1();
                        cfg["prediction_type"] = json!(pred);
                        cfg["timestep_spacing"] = json!(spacing);
                        cfg["beta_schedule"] = json!(betas);
                        cfg["num_train_timesteps"] = json!(train);
                        let what = format!("{} {pred} {spacing} {betas} T={train}", d.name);
                        let Ok(mut s) = build(d, &cfg, None) else { continue };
                        let out = run_loop_unchecked(s.as_mut(), 4, 0, Kind::Float, &what);
                        // Cosine betas over 1000 steps put the first sigma at 2e4; DPM2 a's float32 ancestral
                        // split loses that step, and diffusers' KDPM2AncestralDiscreteScheduler returns NaN there too
                        // (checked with diffusers 0.42.1; its midpoint timestep is NaN).
                        let diffusers_nan = d.name == "dpm2-a" && betas == "squaredcos_cap_v2" && train == 1000;
                        assert!(diffusers_nan || out.iter().all(finite), "{what}: non-finite output");
                        if !continuous_timesteps(d) {
                            assert!(s.timesteps().iter().all(|t| *t < train as f64), "{what}: {:?}", s.timesteps());
                        }
                        assert_eq!(out.len(), s.timesteps().len(), "{what}");
                    }
                }
            }
        }
        // zero terminal SNR, which needs v-prediction (x0 from ε is undefined at ᾱ_T = 0)
        let mut cfg = sd1();
        cfg["prediction_type"] = json!("v_prediction");
        cfg["rescale_betas_zero_snr"] = json!(true);
        cfg["timestep_spacing"] = json!("trailing");
        if let Ok(mut s) = build(d, &cfg, None) {
            run_loop(s.as_mut(), 4, 0, Kind::Float, &format!("{} zero-SNR", d.name));
        }
    }
}

#[test]
fn add_noise_keeps_shape_and_dtype_is_linear_and_noisier_earlier() {
    for d in SAMPLERS {
        let mut s = sd1_sampler(d);
        s.set_timesteps(25, Device::Cpu).unwrap();
        let ts = s.timesteps().to_vec();
        let mut g = TorchGenerator::new(1);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = g.randn(&SHAPE, kind, Device::Cpu);
            let e = g.randn(&SHAPE, kind, Device::Cpu);
            let noised = s.add_noise(&x, &e, ts[5]).unwrap();
            assert_eq!((noised.size(), noised.kind()), (SHAPE.to_vec(), kind), "{} {kind:?}", d.name);
        }
        let x = g.randn(&SHAPE, Kind::Float, Device::Cpu);
        let e = g.randn(&SHAPE, Kind::Float, Device::Cpu);
        let zero = x.zeros_like();
        let mut last_ratio = f64::INFINITY;
        for &t in &ts {
            let both = s.add_noise(&x, &e, t).unwrap();
            let (sig, noi) = (s.add_noise(&x, &zero, t).unwrap(), s.add_noise(&zero, &e, t).unwrap());
            let err = (&both - &sig - &noi).abs().max().double_value(&[]);
            assert!(err <= 1e-5 * both.abs().max().double_value(&[]).max(1.0), "{} t={t}: not linear", d.name);
            let ratio = noi.norm().double_value(&[])
                / e.norm().double_value(&[])
                / (sig.norm().double_value(&[]) / x.norm().double_value(&[]));
            assert!(ratio <= last_ratio * (1.0 + 1e-6), "{} t={t}: noise-to-signal rises along the schedule", d.name);
            last_ratio = ratio;
        }
    }
}

/// diffusers' `set_begin_index`: a sampler told where img2img starts behaves as one finding the place from the
/// timestep (where timesteps are unique, so the lookup is unambiguous); `img2img_timesteps` sets it.
#[test]
fn begin_index_equals_timestep_lookup() {
    for d in SAMPLERS {
        let mut a = sd1_sampler(d);
        let start = img2img_timesteps(a.as_mut(), 10, 0.6).unwrap_or_else(|e| panic!("{}: {e:#}", d.name));
        let ts = a.timesteps().to_vec();
        assert!(start < ts.len(), "{}", d.name);
        let unique = ts.iter().collect::<Vec<_>>().windows(2).all(|w| w[0] != w[1])
            && ts.iter().filter(|t| **t == ts[start]).count() == 1;
        let mut b = sd1_sampler(d);
        b.set_timesteps(10, Device::Cpu).unwrap();
        let mut g = TorchGenerator::new(3);
        let x0 = g.randn(&SHAPE, Kind::Float, Device::Cpu);
        let noise = g.randn(&SHAPE, Kind::Float, Device::Cpu);
        let xa = a.add_noise(&x0, &noise, ts[start]).unwrap();
        if unique {
            assert!(xa.equal(&b.add_noise(&x0, &noise, ts[start]).unwrap()), "{}: add_noise", d.name);
        }
        let (mut xa, mut xb) = (xa.shallow_clone(), xa);
        let (mut ga, mut gb) = (TorchGenerator::new(4), TorchGenerator::new(4));
        for &t in &ts[start..] {
            let ia = a.scale_model_input(&xa, t).unwrap();
            xa = a.step(&model(&ia, t, Kind::Float), t, &xa, &mut ga).unwrap();
            assert!(finite(&xa), "{}: img2img step at {t}", d.name);
            if unique {
                let ib = b.scale_model_input(&xb, t).unwrap();
                xb = b.step(&model(&ib, t, Kind::Float), t, &xb, &mut gb).unwrap();
                assert!(xa.equal(&xb), "{}: begin index and timestep lookup disagree at {t}", d.name);
            }
        }
    }
}

/// `test_step_shape` in both loop dtypes, and the same seed giving the same result (stochastic samplers included).
#[test]
fn steps_keep_shape_and_dtype_and_are_deterministic_per_seed() {
    for d in SAMPLERS {
        for kind in [Kind::Float, Kind::BFloat16] {
            let what = format!("{} {kind:?}", d.name);
            let first = run_loop(sd1_sampler(d).as_mut(), 8, 7, kind, &what);
            let again = run_loop(sd1_sampler(d).as_mut(), 8, 7, kind, &what);
            assert!(same(&first, &again), "{what}: same seed, different result");
            // the same sampler object, reset by set_timesteps, repeats itself too
            let mut s = sd1_sampler(d);
            let one = run_loop(s.as_mut(), 8, 7, kind, &what);
            let two = run_loop(s.as_mut(), 8, 7, kind, &what);
            assert!(same(&one, &two) && same(&one, &first), "{what}: state leaks between runs");
        }
    }
}

/// `test_from_save_pretrained` and `test_compatibles`: the saved config rebuilds the same sampler (and "default"
/// reads it as the same settings); going through any other sampler's saved config and back changes nothing.
#[test]
fn saved_config_round_trips_and_switching_back_restores() {
    let mut refused = vec![];
    for d in SAMPLERS {
        let s = sd1_sampler(d);
        let saved = s.saved_config();
        let again = build(d, &saved, None).unwrap_or_else(|e| panic!("{}: {e:#}", d.name));
        assert_eq!(again.config(), s.config(), "{}: reloaded config differs", d.name);
        let out1 = run_loop(sd1_sampler(d).as_mut(), 6, 5, Kind::Float, d.name);
        let out2 = run_loop(build(d, &saved, None).unwrap().as_mut(), 6, 5, Kind::Float, d.name);
        assert!(same(&out1, &out2), "{}: reloaded sampler steps differently", d.name);
        let default = SamplerChoice::default().build(&saved, &SamplerOptions::default()).unwrap();
        assert_eq!(default.config(), s.config(), "{}: \"default\" on its saved config", d.name);
        for other in SAMPLERS {
            // a class may refuse another's settings, as diffusers' does (DEIS from an SDE DPM-Solver config)
            let Ok(via) = build(other, &saved, None) else {
                refused.push(format!("{} → {}", d.name, other.name));
                continue;
            };
            // what the other sampler sets explicitly travels on, as a keyword argument to from_config does (and may
            // be refused on the way back, as diffusers refuses it)
            let set_by_other = preset_keys(other);
            let back = match build(d, &via.saved_config(), None) {
                Ok(b) => b,
                Err(_) if d.class.keys.iter().any(|k| set_by_other.contains(k)) => {
                    refused.push(format!("{} → {} → {}", d.name, other.name, d.name));
                    continue;
                }
                Err(e) => panic!("{} → {} → {}: {e:#}", d.name, other.name, d.name),
            };
            for k in SchedulerConfig::FIELDS.iter().filter(|k| !set_by_other.contains(*k)) {
                let (b, a) = (back.config().field(k), s.config().field(k));
                assert_eq!(b, a, "{} → {} → {}: `{k}`", d.name, other.name, d.name);
            }
        }
    }
    // only DEIS refuses, and only the SDE algorithms of the DPM-Solver samplers (diffusers raises the same); and a
    // UNet sampler refuses flow-dpmpp-2m's flow_prediction (diffusers' UNet classes fail on it at the first step)
    let kind = |name: &str| SAMPLERS.iter().find(|d| name.trim() == d.name).map(|d| d.models);
    for r in &refused {
        let flow_to_unet = r.contains("flow-dpmpp-2m") && r.split('→').any(|n| kind(n) == Some(Models::Unet));
        assert!((r.contains("deis") && r.contains("sde")) || flow_to_unet, "refused switch: {r} ({refused:?})");
    }
}

/// The fields a sampler's preset sets (seen against the shared defaults and every class's defaults).
fn preset_keys(d: &Descriptor) -> BTreeSet<&'static str> {
    let mut bases = vec![SchedulerConfig::default()];
    for other in SAMPLERS {
        let mut c = SchedulerConfig::default();
        (other.class.defaults)(&mut c);
        bases.push(c);
    }
    let mut keys = BTreeSet::new();
    for base in bases {
        let mut c = base.clone();
        (d.preset)(&mut c);
        keys.extend(SchedulerConfig::FIELDS.iter().filter(|k| c.field(k) != base.field(k)));
    }
    keys
}

/// Every sampler has reference loops in the fixtures, and they replay within the family's tolerance.
#[test]
fn every_sampler_matches_its_reference_fixtures() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for dir in ["schedulers", "schedulers_sde", "schedulers_flow"] {
        let dir = format!("{root}/{dir}");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")).flatten().collect();
        files.sort_by_key(|f| f.path());
        for f in files {
            let path = f.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let family = path.file_stem().unwrap().to_str().unwrap().to_string();
            let j: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let names: BTreeSet<String> =
                j["cases"].as_array().unwrap().iter().map(|c| c["sampler"].as_str().unwrap().to_string()).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let tol = if family == "bf16" { 2.5e-2 } else { 1e-5 };
            common::run_family_in(&dir, &family, &names, tol);
            if family != "bf16" {
                covered.extend(names.iter().map(|n| n.to_string()));
            }
        }
    }
    let missing: Vec<&str> = SAMPLERS.iter().map(|d| d.name).filter(|n| !covered.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "samplers without reference fixtures: {missing:?} (add cases to a scripts/fixtures/gen_1*_schedulers*.py \
         script; see CONTRIBUTING.md, \"Add a sampler\")"
    );
}

/// The `scaled_linear` beta schedule itself (the loops above replay on the reference's recorded betas): LibTorch's
/// float32 linspace squared, as diffusers builds it, against the betas the fixture host computed. Same-host runs are
/// bit-identical; linspace's rounding follows the CPU's vector width, so another host may be one linspace ulp off
/// here and there, which the square turns into at most three ulps of the beta.
#[test]
fn scaled_linear_betas_match_the_reference_within_ulps() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/schedulers");
    let (start, end, want) = common::reference_betas(dir, "ddim");
    let mut cfg = SchedulerConfig::default();
    for (k, v) in [("beta_start", json!(start)), ("beta_end", json!(end)), ("beta_schedule", json!("scaled_linear"))] {
        assert!(cfg.set_field(k, &v).unwrap(), "{k} is a config field");
    }
    cfg.num_train_timesteps = want.len();
    let got = Vec::<f32>::try_from(sd_schedulers::schedule::betas(&cfg).unwrap()).unwrap();
    assert_eq!(got.len(), want.len());
    let mut off = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        // the fixture's JSON holds float32 values; compare as float32 (the f64 parse may end an f64 ulp away)
        let w = w as f32;
        let ulps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
        assert!(ulps <= 3, "beta {i}: {g:e} is {ulps} float32 ulps from the reference's {w:e}");
        off += usize::from(ulps != 0);
    }
    eprintln!("scaled_linear betas: {off} of {} differ from the reference host's (by at most 3 ulps)", want.len());
}
