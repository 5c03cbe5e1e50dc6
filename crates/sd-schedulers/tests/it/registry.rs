//! Name parsing (A1111 names, short forms, schedule suffixes, did-you-mean), the typed choice's string and serde
//! forms, diffusers' `from_config` semantics on the typed config, and bad inputs.

use sd_core::TorchGenerator;
use sd_schedulers::{
    get_velocity, img2img_timesteps, list, AlgorithmType, Sampler, SamplerChoice, SamplerOptions, Schedule, Scheduler,
    SolverType, TimestepSpacing, SAMPLERS,
};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

fn sd1() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/models/sd1/scheduler/scheduler_config.json"
        ))
        .expect("fixtures/models/sd1/scheduler/scheduler_config.json (run gen_00_tiny_models.py)"),
    )
    .unwrap()
}

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// `name` (with an optional `--schedule`) built for `cfg`.
fn build(name: &str, cfg: &Value, schedule: Option<&str>) -> anyhow::Result<Box<dyn Scheduler>> {
    build_opts(name, cfg, schedule, json!({}))
}

fn build_opts(name: &str, cfg: &Value, schedule: Option<&str>, opts: Value) -> anyhow::Result<Box<dyn Scheduler>> {
    let schedule = schedule.map(str::parse::<Schedule>).transpose()?;
    let choice = name.parse::<SamplerChoice>()?.with_schedule(schedule);
    choice.build(cfg, &serde_json::from_value::<SamplerOptions>(opts)?)
}

fn parsed(name: &str) -> (&'static str, Option<Schedule>) {
    let c: SamplerChoice = name.parse().unwrap_or_else(|e| panic!("{name}: {e:#}"));
    match c.sampler {
        Sampler::Named(d) => (d.name, c.schedule),
        Sampler::ModelDefault => ("default", c.schedule),
    }
}

#[test]
fn a1111_and_short_names_resolve() {
    use Schedule::*;
    for (name, want, sched) in [
        ("Euler a", "euler-a", None),
        ("euler_a", "euler-a", None),
        ("DPM++ 2M Karras", "dpmpp-2m", Some(Karras)),
        ("DPM++ 2M SDE Karras", "dpmpp-2m-sde", Some(Karras)),
        ("dpmpp-2m-sde-karras", "dpmpp-2m-sde", Some(Karras)),
        ("DPM++ 2M SDE Exponential", "dpmpp-2m-sde", Some(Exponential)),
        ("DPM++ 2M SDE Heun", "dpmpp-2m-sde-heun", None),
        ("DPM++ 2M SDE Heun Exponential", "dpmpp-2m-sde-heun", Some(Exponential)),
        ("LMS Karras", "lms", Some(Karras)),
        ("DPM2 a Karras", "dpm2-a", Some(Karras)),
        ("Euler SGM Uniform", "euler", Some(SgmUniform)),
        ("euler_sgm_uniform", "euler", Some(SgmUniform)),
        ("Euler Align Your Steps", "euler", Some(Ays)),
        ("dpmpp-2m-ays-sdxl", "dpmpp-2m", Some(AysSdxl)),
        ("DDIM", "ddim", None),
        ("PLMS", "plms", None),
        ("UniPC", "unipc", None),
        ("LCM", "lcm", None),
        ("heun", "heun", None),
        ("default", "default", None),
        ("Default", "default", None),
        ("default karras", "default", Some(Karras)),
    ] {
        assert_eq!(parsed(name), (want, sched), "{name}");
    }
}

#[test]
fn display_parses_back_and_serde_uses_the_string() {
    for d in SAMPLERS {
        for s in std::iter::once(None).chain(Schedule::ALL.into_iter().map(Some)) {
            let c = SamplerChoice::new(d).with_schedule(s);
            let text = c.to_string();
            assert_eq!(text.parse::<SamplerChoice>().unwrap(), c, "{text}");
            let j = serde_json::to_value(c).unwrap();
            assert_eq!(j, json!(text));
            assert_eq!(serde_json::from_value::<SamplerChoice>(j).unwrap(), c);
        }
    }
    assert_eq!(SamplerChoice::default().to_string(), "default");
    let c: SamplerChoice = "dpmpp-2m-karras".parse().unwrap();
    assert_eq!(c.to_string(), "DPM++ 2M Karras");
    assert!(serde_json::from_value::<SamplerChoice>(json!("Eular a")).is_err());
    for s in Schedule::ALL {
        assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
        assert_eq!(serde_json::from_value::<Schedule>(serde_json::to_value(s).unwrap()).unwrap(), s);
    }
}

#[test]
fn unknown_names_list_valid_ones_and_suggest() {
    let e = err("Eular a".parse::<SamplerChoice>());
    assert!(e.contains("did you mean \"Euler a\""), "{e}");
    assert!(e.contains("dpmpp-2m") && e.contains("DDIM"), "error should list valid names: {e}");
    let e = err("DPM++ 2M Karas".parse::<SamplerChoice>());
    assert!(e.contains("did you mean"), "{e}");
    let e = err("no-such-sampler-at-all".parse::<SamplerChoice>());
    assert!(e.contains("unknown sampler"), "{e}");
    let e = err("karas".parse::<Schedule>());
    assert!(e.contains("unknown schedule") && e.contains("did you mean \"karras\""), "{e}");
}

#[test]
fn a1111_scheduler_field_maps_or_is_refused_by_name() {
    use Schedule::*;
    for (api, want) in [
        ("automatic", None),
        ("Automatic", None),
        ("", None),
        ("karras", Some(Karras)),
        ("Karras", Some(Karras)),
        ("exponential", Some(Exponential)),
        ("sgm_uniform", Some(SgmUniform)),
        ("SGM Uniform", Some(SgmUniform)),
        ("SGMUniform", Some(SgmUniform)),
        ("beta", Some(Beta)),
        ("align_your_steps", Some(Ays)),
        ("Align Your Steps", Some(Ays)),
    ] {
        assert_eq!(Schedule::from_a1111(api).unwrap_or_else(|e| panic!("{api}: {e:#}")), want, "{api}");
    }
    for api in ["uniform", "polyexponential", "kl_optimal", "simple", "normal", "ddim", "align_your_steps_GITS"] {
        let e = err(Schedule::from_a1111(api));
        assert!(e.contains(api) && e.contains("cannot reproduce"), "{api}: {e}");
    }
    let e = err(Schedule::from_a1111("wobbly"));
    assert!(e.contains("unknown A1111 scheduler"), "{e}");
    // labels for metadata: the A1111 "Schedule type" values
    assert_eq!(Karras.a1111_label(), Some("Karras"));
    assert_eq!(SgmUniform.a1111_label(), Some("SGM Uniform"));
    assert_eq!(AysSdxl.a1111_label(), Some("Align Your Steps"));
    assert_eq!(Normal.a1111_label(), None);
    for s in [Karras, Exponential, Beta, SgmUniform, Ays] {
        assert_eq!(Schedule::from_a1111(s.a1111_label().unwrap()).unwrap(), Some(s));
    }
}

#[test]
fn sde_and_2s_ancestral_resolve_from_a1111_names() {
    for (name, want, karras) in [
        ("DPM++ SDE", "dpmpp-sde", false),
        ("DPM++ SDE Karras", "dpmpp-sde", true),
        ("dpmpp-sde", "dpmpp-sde", false),
        ("DPM++ 2S a", "dpmpp-2s-a", false),
        ("DPM++ 2S a Karras", "dpmpp-2s-a", true),
        ("dpmpp_2s_a", "dpmpp-2s-a", false),
    ] {
        let s = build(name, &sd1(), None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(s.name(), want, "{name}");
        assert_eq!(s.config().use_karras_sigmas, karras, "{name}");
        assert_eq!(s.schedule(), karras.then_some(Schedule::Karras), "{name}");
        assert_eq!(s.order(), 2, "{name}");
    }
    assert_eq!(build("DPM++ SDE", &sd1(), None).unwrap().config().class_name, "DPMSolverSDEScheduler");
}

#[test]
fn from_config_keeps_shared_keys_and_takes_class_defaults() {
    let s = build("Euler", &sd1(), None).unwrap();
    let c = s.config();
    assert_eq!(c.class_name, "EulerDiscreteScheduler");
    assert_eq!((c.beta_start, c.beta_end, c.steps_offset), (0.00085, 0.012, 1));
    assert_eq!(c.beta_schedule, sd_schedulers::BetaSchedule::ScaledLinear);
    assert_eq!(c.timestep_spacing, TimestepSpacing::Leading);
    assert!(!c.use_karras_sigmas);
    let s = build("DPM++ 2M SDE Karras", &sd1(), None).unwrap();
    assert!(s.config().use_karras_sigmas);
    assert_eq!(s.config().algorithm_type, AlgorithmType::SdeDpmSolverPlusPlus);
    // --schedule overrides the name's schedule
    let s = build("DPM++ 2M Karras", &sd1(), Some("exponential")).unwrap();
    assert!(!s.config().use_karras_sigmas && s.config().use_exponential_sigmas);
    assert_eq!(s.schedule(), Some(Schedule::Exponential));
    // "default" = the model's class with its saved settings, reported as the sampler those settings make
    let s = build("default", &sd1(), None).unwrap();
    assert_eq!(s.config().class_name, "PNDMScheduler");
    assert!(s.config().skip_prk_steps);
    assert_eq!(s.name(), "plms");
    // DDIM from an SD config: set_alpha_to_one is the model's (false), clip_sample the class default (true)
    let s = build("DDIM", &sd1(), None).unwrap();
    assert!(!s.config().set_alpha_to_one && s.config().clip_sample);
    // keys of other classes are kept (hidden), not warned about; the saved config carries them on
    let s = build("Euler", &sd1(), None).unwrap();
    assert_eq!(s.config().hidden.get("skip_prk_steps"), Some(&json!(true)));
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    assert_eq!(s.saved_config()["skip_prk_steps"], json!(true));
    assert_eq!(s.saved_config()["_class_name"], json!("EulerDiscreteScheduler"));
}

#[test]
fn model_default_keeps_the_saved_settings_of_its_class() {
    let mut cfg = sd1();
    cfg["_class_name"] = json!("DPMSolverMultistepScheduler");
    cfg["algorithm_type"] = json!("sde-dpmsolver++");
    cfg["use_karras_sigmas"] = json!(true);
    let s = build("default", &cfg, None).unwrap();
    assert_eq!(s.name(), "dpmpp-2m-sde");
    assert_eq!(s.schedule(), Some(Schedule::Karras));
    // a setting no named sampler has is kept, not replaced by the class's first sampler's preset
    cfg["algorithm_type"] = json!("dpmsolver++");
    cfg["solver_order"] = json!(3);
    let s = build("default", &cfg, None).unwrap();
    assert_eq!((s.name(), s.config().solver_order), ("dpmpp-2m", 3));
    cfg["_class_name"] = json!("FlowMatchEulerDiscreteScheduler");
    assert_eq!(build("default", &cfg, None).unwrap().name(), "flow-euler");
    cfg["_class_name"] = json!("FlowMatchHeunDiscreteScheduler");
    assert_eq!(build("default", &cfg, None).unwrap().name(), "flow-heun");
    // a DPM-Solver config over flow sigmas is the flow sampler, not the UNet one of the same class
    cfg["_class_name"] = json!("DPMSolverMultistepScheduler");
    cfg["solver_order"] = json!(2);
    cfg["use_karras_sigmas"] = json!(false);
    cfg["use_flow_sigmas"] = json!(true);
    cfg["prediction_type"] = json!("flow_prediction");
    cfg["flow_shift"] = json!(3.0);
    let s = build("default", &cfg, None).unwrap();
    assert_eq!((s.name(), s.config().flow_shift), ("flow-dpmpp-2m", 3.0));
    let e = err(build("dpmpp-2m", &cfg, None));
    assert!(e.contains("flow_prediction") && e.contains("dpmpp-2m"), "{e}");
    cfg["_class_name"] = json!("KDPM2DiscreteScheduler");
    let e = err(build("default", &cfg, None));
    assert!(e.contains("flow_prediction"), "{e}");
}

/// Each sampler names the models it drives; the other kind is refused with the samplers that do apply.
#[test]
fn samplers_are_refused_on_the_other_kind_of_model() {
    use sd_schedulers::{check_models, lookup, Models};
    let flow: Vec<&str> = SAMPLERS.iter().filter(|d| d.models == Models::Flow).map(|d| d.name).collect();
    assert_eq!(flow, ["flow-euler", "flow-euler-a", "flow-heun", "flow-dpmpp-2m"]);
    let euler = lookup("euler").unwrap();
    check_models(euler, Models::Unet, "sd1").unwrap();
    let e = format!("{:#}", check_models(euler, Models::Flow, "sd3").unwrap_err());
    assert!(e.contains("sampler euler is for UNet models (sd1 sd2 sdxl), not for this sd3 model"), "{e}");
    assert!(e.contains("samplers for it: flow-euler, flow-euler-a, flow-heun, flow-dpmpp-2m"), "{e}");
    let e = format!("{:#}", check_models(lookup("flow-heun").unwrap(), Models::Unet, "sdxl").unwrap_err());
    assert!(e.contains("is for flow-matching models (sd3), not for this sdxl model"), "{e}");
    assert!(e.contains("samplers for it: euler, euler-a, ddim,") && !e.contains("flow-euler,"), "{e}");
    let listed = list();
    assert_eq!(listed.iter().find(|i| i.name == "flow-dpmpp-2m").unwrap().models, "sd3");
    assert_eq!(listed.iter().find(|i| i.name == "dpmpp-2m").unwrap().models, "sd1 sd2 sdxl");
}

/// diffusers' `test_default_arguments_not_in_config` and `test_default_solver_type_after_switch`: a class default
/// recorded in `_use_default_values` does not travel to the next class; an explicit value does.
#[test]
fn class_defaults_do_not_travel_but_explicit_values_do() {
    let mut cfg = sd1();
    cfg.as_object_mut().unwrap().remove("timestep_spacing");
    cfg["_class_name"] = json!("DDIMScheduler");
    let ddim = build("ddim", &cfg, None).unwrap();
    assert_eq!(ddim.config().timestep_spacing, TimestepSpacing::Leading);
    let saved = ddim.saved_config();
    assert!(saved["_use_default_values"].as_array().unwrap().contains(&json!("timestep_spacing")), "{saved}");
    let euler = build("euler", &saved, None).unwrap();
    assert_eq!(euler.config().timestep_spacing, TimestepSpacing::Linspace);
    let euler = build_opts("euler", &saved, None, json!({"timestep_spacing": "trailing"})).unwrap();
    let lms = build("lms", &euler.saved_config(), None).unwrap();
    assert_eq!(lms.config().timestep_spacing, TimestepSpacing::Trailing);
    let lms = build("lms", &lms.saved_config(), None).unwrap();
    assert_eq!(lms.config().timestep_spacing, TimestepSpacing::Trailing);

    let deis = build("deis", &ddim.saved_config(), None).unwrap();
    assert_eq!(deis.config().solver_type, SolverType::Logrho);
    let unipc = build("unipc", &deis.saved_config(), None).unwrap();
    assert_eq!(unipc.config().solver_type, SolverType::Bh2);
}

#[test]
fn unknown_keys_are_kept_and_reported_unimplemented_ones_refused() {
    let mut cfg = sd1();
    cfg["use_fancy_sigmas"] = json!(true);
    let s = build("euler", &cfg, None).unwrap();
    assert_eq!(s.config().hidden.get("use_fancy_sigmas"), Some(&json!(true)));
    assert_eq!(s.warnings().len(), 1, "{:?}", s.warnings());
    assert!(s.warnings()[0].contains("use_fancy_sigmas"), "{:?}", s.warnings());
    assert_eq!(s.saved_config()["use_fancy_sigmas"], json!(true));
    // a diffusers option sd-rs does not implement: its default passes, anything else is refused for that class
    let mut cfg = sd1();
    cfg["use_lu_lambdas"] = json!(false);
    assert!(build("dpmpp-2m", &cfg, None).unwrap().warnings().is_empty());
    cfg["use_lu_lambdas"] = json!(true);
    let e = err(build("dpmpp-2m", &cfg, None));
    assert!(e.contains("use_lu_lambdas") && e.contains("does not implement"), "{e}");
    // ... but not for a class that does not have it (diffusers drops it there too)
    assert!(build("euler", &cfg, None).unwrap().warnings().is_empty());
    // explicit config values must be options of the class
    let e = err(build_opts("euler", &sd1(), None, json!({"solver_order": 3})));
    assert!(e.contains("solver_order") && e.contains("EulerDiscreteScheduler"), "{e}");
    // eta for a sampler without one is ignored with a warning (as diffusers ignores it), used where declared
    let s = build_opts("euler", &sd1(), None, json!({"eta": 0.5})).unwrap();
    assert!(s.warnings().iter().any(|w| w.contains("eta") && w.contains("ddim")), "{:?}", s.warnings());
    let s = build_opts("ddim", &sd1(), None, json!({"eta": 0.5})).unwrap();
    assert!(s.warnings().is_empty() && s.config().eta == 0.5);
    let e = err(build_opts("ddim", &sd1(), None, json!({"eta": -1.0})));
    assert!(e.contains("eta"), "{e}");
}

#[test]
fn schedules_a_class_lacks_are_refused() {
    let e = err(build("Euler a", &sd1(), Some("karras")));
    assert!(e.contains("karras") && e.contains("euler-a"), "{e}");
    let e = err(build("DDIM", &sd1(), Some("ays")));
    assert!(e.contains("no ays schedule"), "{e}");
    let e = err(build("Euler", &sd1(), Some("fancy")));
    assert!(e.contains("unknown schedule"), "{e}");
}

#[test]
fn bad_steps_and_strength_are_errors() {
    for d in SAMPLERS {
        let name = d.name;
        let mut s = build(name, &sd1(), None).unwrap();
        let e = err(s.set_timesteps(0, Device::Cpu));
        assert!(e.contains("at least 1"), "{name}: {e}");
        if name != "edm-euler" {
            let e = err(s.set_timesteps(1001, Device::Cpu));
            assert!(e.contains("num_train_timesteps"), "{name}: {e}");
        }
        for strength in [0.0, -0.5, 1.5, f64::NAN] {
            let e = err(img2img_timesteps(s.as_mut(), 20, strength));
            assert!(e.contains("strength"), "{name} {strength}: {e}");
        }
        let e = err(img2img_timesteps(s.as_mut(), 2, 0.1));
        assert!(e.contains("no denoising step"), "{name}: {e}");
    }
    let mut s = build("lcm", &sd1(), None).unwrap();
    let e = err(s.set_timesteps(60, Device::Cpu));
    assert!(e.contains("original_inference_steps"), "{e}");
}

#[test]
fn unsupported_prediction_types_are_errors() {
    let mut cfg = sd1();
    cfg["prediction_type"] = json!("sample");
    for name in ["Euler a", "DPM2", "DPM2 a", "PLMS", "DPM++ 2M SDE Heun"] {
        let e = err(build(name, &cfg, None));
        assert!(e.contains("sample"), "{name}: {e}");
    }
    cfg["prediction_type"] = json!("flow");
    let e = err(build("Euler", &cfg, None));
    assert!(e.contains("prediction_type") && e.contains("flow"), "{e}");
    let e = err(build_opts("dpm-2m", &sd1(), None, json!({"final_sigmas_type": "zero"})));
    assert!(e.contains("sigma_min"), "{e}");
    let e = err(build_opts("dpmpp-2m", &sd1(), None, json!({"algorithm_type": "dpmsolver+++"})));
    assert!(e.contains("algorithm_type"), "{e}");
}

#[test]
fn step_before_set_timesteps_is_an_error_not_a_panic() {
    let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let mut g = TorchGenerator::new(0);
    for d in SAMPLERS {
        let mut s = build(d.name, &sd1(), None).unwrap();
        assert!(s.step(&x, 999.0, &x, &mut g).is_err(), "{}", d.name);
    }
}

#[test]
fn begin_index_past_the_schedule_is_an_error_not_a_panic() {
    let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let mut g = TorchGenerator::new(0);
    for info in list() {
        let mut s = build(info.name, &sd1(), None).unwrap();
        s.set_timesteps(4, Device::Cpu).unwrap();
        s.set_begin_index(50);
        let t = s.timesteps()[0];
        let name = info.name;
        let result = s.scale_model_input(&x, t).and_then(|_| s.step(&x, t, &x, &mut g));
        // DDIM and PNDM, like their diffusers classes, find their place from the timestep alone.
        if ["ddim", "pndm", "plms"].contains(&name) {
            assert!(result.is_ok(), "{name}: {:#}", result.err().unwrap());
        } else {
            let e = err(result);
            assert!(e.contains("begin index 50 is past the end"), "{name}: {e}");
        }
    }
}

#[test]
fn list_covers_every_registered_sampler() {
    let l = list();
    assert_eq!(l.len(), SAMPLERS.len());
    assert!(l.len() >= 22, "{}", l.len());
    for info in &l {
        build(info.name, &sd1(), None).unwrap_or_else(|e| panic!("{}: {e:#}", info.name));
        for a in &info.a1111 {
            assert_eq!(parsed(a).0, info.name);
        }
    }
    let ddim = l.iter().find(|i| i.name == "ddim").unwrap();
    assert_eq!(ddim.options, vec!["--eta"]);
}

#[test]
fn velocity_matches_definition() {
    // v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 with ᾱ from the SD schedule (float32 cumprod)
    let cfg = build("ddpm", &sd1(), None).unwrap().config().clone();
    let x0 = Tensor::ones([2, 1, 1, 1], (Kind::Float, Device::Cpu));
    let eps = Tensor::full([2, 1, 1, 1], 2.0, (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 999]);
    let v = Vec::<f32>::try_from(get_velocity(&cfg, &x0, &eps, &t).unwrap().flatten(0, -1)).unwrap();
    // ᾱ_0 = 1 − 0.00085, ᾱ_999 = 0.0046… (diffusers' alphas_cumprod[999] for SD = 0.00466…)
    let a0 = 1.0f64 - 0.00085;
    assert!((v[0] as f64 - (2.0 * a0.sqrt() - (1.0 - a0).sqrt())).abs() < 1e-5, "{v:?}");
    assert!(v[1] < 0.0 && v[1] > -1.0, "{v:?}");
    let e = err(get_velocity(&cfg, &x0, &eps, &Tensor::from_slice(&[0i64, 1000])));
    assert!(e.contains("1000"), "{e}");
}

/// The training code reads any scheduler config through `Deserialize`: typed, with a bad value naming its field.
#[test]
fn any_config_deserializes_typed() {
    let c: sd_schedulers::SchedulerConfig = serde_json::from_value(sd1()).unwrap();
    assert_eq!(c.steps_offset, 1);
    assert_eq!(c.hidden.get("skip_prk_steps"), None, "skip_prk_steps is a field");
    let mut bad = sd1();
    bad["beta_schedule"] = json!("cubic");
    let e = serde_json::from_value::<sd_schedulers::SchedulerConfig>(bad).unwrap_err().to_string();
    assert!(e.contains("beta_schedule"), "{e}");
}
