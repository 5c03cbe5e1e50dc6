//! Name parsing (A1111 names, short forms, schedule suffixes, did-you-mean), from_config semantics and bad inputs.

use sd_core::TorchGenerator;
use sd_schedulers::{build, build_with, get_velocity, img2img_timesteps, list, parse_sampler};
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn sd1() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/models/sd1/scheduler/scheduler_config.json"
        ))
        .expect("fixtures/models/sd1/scheduler/scheduler_config.json (run gen_00_tiny_models.py)"),
    )
    .unwrap()
}

fn err(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a1111_and_short_names_resolve() {
    for (name, spec, sched) in [
        ("Euler a", "euler-a", None),
        ("euler_a", "euler-a", None),
        ("DPM++ 2M Karras", "dpmpp-2m", Some("karras")),
        ("DPM++ 2M SDE Karras", "dpmpp-2m-sde", Some("karras")),
        ("dpmpp-2m-sde-karras", "dpmpp-2m-sde", Some("karras")),
        ("DPM++ 2M SDE Exponential", "dpmpp-2m-sde", Some("exponential")),
        ("LMS Karras", "lms", Some("karras")),
        ("DPM2 a Karras", "dpm2-a", Some("karras")),
        ("DDIM", "ddim", None),
        ("PLMS", "plms", None),
        ("UniPC", "unipc", None),
        ("LCM", "lcm", None),
        ("heun", "heun", None),
    ] {
        let p = parse_sampler(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((p.spec_name, p.schedule), (spec, sched), "{name}");
    }
}

#[test]
fn unknown_names_list_valid_ones_and_suggest() {
    let e = err(parse_sampler("Eular a"));
    assert!(e.contains("did you mean \"Euler a\""), "{e}");
    assert!(e.contains("dpmpp-2m") && e.contains("DDIM"), "error should list valid names: {e}");
    let e = err(parse_sampler("DPM++ 2M Karas"));
    assert!(e.contains("did you mean"), "{e}");
    let e = err(build("no-such-sampler-at-all", &sd1(), None));
    assert!(e.contains("unknown sampler"), "{e}");
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
        assert_eq!(s.order(), 2, "{name}");
    }
    assert_eq!(build("DPM++ SDE", &sd1(), None).unwrap().config().class_name, "DPMSolverSDEScheduler");
    let names: Vec<&str> = sd_schedulers::list().iter().map(|i| i.name).collect();
    assert!(names.contains(&"dpmpp-sde") && names.contains(&"dpmpp-2s-a"), "{names:?}");
}

#[test]
fn from_config_keeps_shared_keys_and_takes_class_defaults() {
    let s = build("Euler", &sd1(), None).unwrap();
    let c = s.config();
    assert_eq!(c.class_name, "EulerDiscreteScheduler");
    assert_eq!(
        (c.beta_schedule.as_str(), c.beta_start, c.beta_end, c.steps_offset),
        ("scaled_linear", 0.00085, 0.012, 1)
    );
    assert_eq!(c.timestep_spacing, "leading");
    assert!(!c.use_karras_sigmas);
    let s = build("DPM++ 2M SDE Karras", &sd1(), None).unwrap();
    assert!(s.config().use_karras_sigmas);
    assert_eq!(s.config().algorithm_type, "sde-dpmsolver++");
    // --schedule overrides the name's schedule
    let s = build("DPM++ 2M Karras", &sd1(), Some("exponential")).unwrap();
    assert!(!s.config().use_karras_sigmas && s.config().use_exponential_sigmas);
    // "default" = the model's class
    let s = build("default", &sd1(), None).unwrap();
    assert_eq!(s.config().class_name, "PNDMScheduler");
    assert!(s.config().skip_prk_steps);
    // DDIM from an SD config: set_alpha_to_one is the model's (false), clip_sample the class default (true)
    let s = build("DDIM", &sd1(), None).unwrap();
    assert!(!s.config().set_alpha_to_one && s.config().clip_sample);
}

#[test]
fn schedules_a_class_lacks_are_refused() {
    let e = err(build("Euler a", &sd1(), Some("karras")));
    assert!(e.contains("karras"), "{e}");
    let e = err(build("DDIM", &sd1(), Some("ays")));
    assert!(e.contains("AYS"), "{e}");
    let e = err(build("Euler", &sd1(), Some("fancy")));
    assert!(e.contains("unknown schedule"), "{e}");
}

#[test]
fn bad_steps_and_strength_are_errors() {
    for name in
        ["euler", "euler-a", "ddim", "dpmpp-2m", "heun", "lms", "dpm2", "dpm2-a", "ddpm", "plms", "unipc", "lcm", "tcd"]
    {
        let mut s = build(name, &sd1(), None).unwrap();
        let e = err(s.set_timesteps(0, Device::Cpu));
        assert!(e.contains("at least 1"), "{name}: {e}");
        let e = err(s.set_timesteps(1001, Device::Cpu));
        assert!(e.contains("num_train_timesteps"), "{name}: {e}");
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
    for name in ["Euler a", "DPM2", "DPM2 a", "PLMS"] {
        let e = err(build(name, &cfg, None));
        assert!(e.contains("sample"), "{name}: {e}");
    }
    cfg["prediction_type"] = json!("flow");
    let e = err(build("Euler", &cfg, None));
    assert!(e.contains("prediction_type"), "{e}");
    let e = err(build_with("dpm-2m", &sd1(), None, &json!({"final_sigmas_type": "zero"})));
    assert!(e.contains("sigma_min"), "{e}");
}

#[test]
fn step_before_set_timesteps_is_an_error_not_a_panic() {
    let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let mut g = TorchGenerator::new(0);
    for name in ["euler", "ddim", "dpmpp-2m", "heun", "unipc", "plms", "lcm"] {
        let mut s = build(name, &sd1(), None).unwrap();
        assert!(s.step(&x, 999.0, &x, &mut g).is_err(), "{name}");
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
    assert!(l.len() >= 17, "{}", l.len());
    for info in &l {
        build(info.name, &sd1(), None).unwrap_or_else(|e| panic!("{}: {e:#}", info.name));
        for a in &info.a1111 {
            assert_eq!(parse_sampler(a).unwrap().spec_name, info.name);
        }
    }
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
