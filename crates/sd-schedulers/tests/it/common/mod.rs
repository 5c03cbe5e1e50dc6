//! Replays the reference sampler loops recorded by `scripts/fixtures/gen_10_schedulers.py` (diffusers 0.42.1 with a
//! deterministic stand-in model) through `SamplerChoice::build` and compares every step.

#![allow(dead_code)] // each test binary uses part of this module

use sd_core::TorchGenerator;
use sd_schedulers::{img2img_timesteps, SamplerChoice, SamplerOptions, Scheduler};
use serde_json::Value;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

pub fn fixture_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/schedulers").to_string()
}

fn load(dir: &str, family: &str) -> (Value, HashMap<String, Tensor>) {
    let j = std::fs::read_to_string(format!("{dir}/{family}.json")).unwrap_or_else(|e| {
        panic!(
            "missing fixture {dir}/{family}.json ({e}); run the scripts/fixtures/gen_1*_schedulers*.py that writes it"
        )
    });
    let t = Tensor::read_safetensors(format!("{dir}/{family}.safetensors")).expect("fixture safetensors");
    (serde_json::from_str(&j).expect("fixture json"), t.into_iter().collect())
}

/// A fixture case's sampler: its name, schedule (short names) and `extra` (eta and diffusers config kwargs).
pub fn build_case(
    sampler: &str,
    model_config: &Value,
    schedule: Option<&str>,
    extra: &Value,
) -> anyhow::Result<Box<dyn Scheduler>> {
    let schedule = schedule.map(str::parse).transpose()?;
    let choice = sampler.parse::<SamplerChoice>()?.with_schedule(schedule);
    let opts: SamplerOptions = serde_json::from_value(extra.clone())?;
    choice.build(model_config, &opts)
}

/// The case's model config with the fixture's recorded `scaled_linear` betas as `trained_betas`, so the loop runs on
/// the very betas diffusers used. torch.linspace's float32 rounding depends on the CPU's vector width (an ulp here and
/// there between an AVX2 and an AVX-512 host), and some loops amplify that far beyond the step tolerance (DEIS order 3
/// by ~100×, the Brownian tree's end point chaotically); `scaled_linear_betas_match_the_reference_within_ulps` checks
/// the beta schedule on its own.
pub fn with_reference_betas(meta: &Value, model_config: &Value) -> Value {
    let rb = &meta["scaled_linear_betas"];
    if rb.is_null() || model_config["beta_schedule"] != "scaled_linear" || !model_config["trained_betas"].is_null() {
        return model_config.clone();
    }
    assert!(
        model_config["beta_start"] == rb["beta_start"] && model_config["beta_end"] == rb["beta_end"],
        "a case's beta range {model_config} differs from the recorded betas' {} .. {}",
        rb["beta_start"],
        rb["beta_end"]
    );
    let mut c = model_config.clone();
    c["trained_betas"] = rb["values"].clone();
    c
}

/// The recorded reference betas of a fixture family (`gen_10`'s `reference_betas`), with their range.
pub fn reference_betas(dir: &str, family: &str) -> (f64, f64, Vec<f64>) {
    let (meta, _) = load(dir, family);
    let rb = &meta["scaled_linear_betas"];
    let values = rb["values"].as_array().expect("fixture records scaled_linear_betas").iter();
    (
        rb["beta_start"].as_f64().unwrap(),
        rb["beta_end"].as_f64().unwrap(),
        values.map(|v| v.as_f64().unwrap()).collect(),
    )
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Run every case of `family`; `tol` is relative: max |rust - diffusers| ≤ tol · max(1, max |diffusers|) per step.
/// Returns the number of cases checked.
pub fn run_family(family: &str, samplers: &[&str], tol: f64) -> usize {
    run_family_in(&fixture_dir(), family, samplers, tol)
}

/// `run_family` for fixtures under another directory (e.g. `fixtures/schedulers_sde`).
pub fn run_family_in(dir: &str, family: &str, samplers: &[&str], tol: f64) -> usize {
    let (meta, tensors) = load(dir, family);
    let shape: Vec<i64> = meta["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let col = |k: &str| {
        let v: Vec<f32> = meta[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        Tensor::from_slice(&v).view([1, -1, 1, 1])
    };
    let (a, b) = (col("a"), col("b"));
    let mut checked = 0;
    let mut worst = 0f64;
    for cs in meta["cases"].as_array().unwrap() {
        let sampler = cs["sampler"].as_str().unwrap();
        if !samplers.contains(&sampler) {
            continue;
        }
        let key = cs["key"].as_str().unwrap();
        let what = format!(
            "{key} {sampler} steps={} schedule={} model_over={} extra={} strength={}",
            cs["steps"], cs["schedule"], cs["model_over"], cs["extra"], cs["strength"]
        );
        let states = &tensors[key];
        let config = with_reference_betas(&meta, &cs["model_config"]);
        let mut s = build_case(sampler, &config, cs["schedule"].as_str(), &cs["extra"])
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        // The loop's dtype (latents and model output), as a pipeline in that dtype runs it; float32 by default.
        let kind = match cs["dtype"].as_str() {
            None => Kind::Float,
            Some("bf16") => Kind::BFloat16,
            Some(other) => panic!("{what}: unknown dtype {other}"),
        };
        let n = cs["steps"].as_u64().unwrap() as usize;
        let seed = cs["seed"].as_u64().unwrap();
        let mut g = TorchGenerator::new(seed);
        // the resolution-dependent shift of a dynamic-shifting case (diffusers' `set_timesteps(mu=…)`)
        if let Some(mu) = cs["mu"].as_f64() {
            s.set_mu(mu).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        }
        let (start, mut latents) = if let Some(strength) = cs["strength"].as_f64() {
            let start = img2img_timesteps(s.as_mut(), n, strength).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let x0 = TorchGenerator::new(seed + 1000).randn(&shape, Kind::Float, Device::Cpu);
            let noise = g.randn(&shape, Kind::Float, Device::Cpu);
            let t0 = s.timesteps()[start];
            (start, s.add_noise(&x0, &noise, t0).unwrap())
        } else {
            s.set_timesteps(n, Device::Cpu).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            (0, g.randn(&shape, kind, Device::Cpu) * s.init_noise_sigma())
        };
        assert_eq!(start as u64, cs["start"].as_u64().unwrap(), "{what}: img2img start index");
        // timesteps: float32 values in diffusers; ours must be the same numbers
        let want: Vec<f64> = cs["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = s.timesteps().to_vec();
        assert_eq!(got.len(), want.len(), "{what}: timestep count {got:?} vs {want:?}");
        for (g_, w) in got.iter().zip(&want) {
            assert!((g_ - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}: timesteps {got:?} vs {want:?}");
        }
        if let Some(ws) = cs["sigmas"].as_array() {
            let ws: Vec<f64> = ws.iter().map(|v| v.as_f64().unwrap()).collect();
            let gs = s.sigmas();
            assert_eq!(gs.len(), ws.len(), "{what}: sigma count");
            for (g_, w) in gs.iter().zip(&ws) {
                assert!((g_ - w).abs() <= 1e-6 * w.abs().max(1.0), "{what}: sigmas {gs:?} vs {ws:?}");
            }
        }
        let ins = cs["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - ins).abs() <= 1e-5 * ins.max(1.0),
            "{what}: init_noise_sigma {} vs {ins}",
            s.init_noise_sigma()
        );
        // With the schedule checked above, the loop replays on the reference's own timesteps and sigmas, as it does
        // on its betas (see `with_reference_betas`): the reference computes them in float32 with numpy / LibTorch
        // vector code whose last ulp depends on the host's SIMD, and DEIS order 3 or the Brownian tree's interval
        // ends turn one such ulp into more than the step tolerance.
        let ref_sigmas = match cs["sigmas"].as_array() {
            Some(ws) => ws.iter().map(|v| v.as_f64().unwrap()).collect(),
            None => s.sigmas().to_vec(),
        };
        s.state_mut().set_schedule(want.clone(), ref_sigmas);
        if cs["strength"].as_f64().is_some() {
            s.set_begin_index(start);
        }
        let mut check = |i: usize, x: &Tensor| {
            let r = states.get(i as i64);
            assert_eq!(x.kind(), kind, "{what}: state {i} is {:?}, the loop runs in {kind:?}", x.kind());
            let err = max_abs(&(x.to_kind(Kind::Float) - &r));
            let scale = max_abs(&r).max(1.0);
            worst = worst.max(err / scale);
            assert!(err <= tol * scale, "{what}: state {i} differs: max abs err {err:e} (scale {scale}, tol {tol:e})");
        };
        check(0, &latents);
        let ts: Vec<f64> = s.timesteps()[start..].to_vec();
        for (i, &t) in ts.iter().enumerate() {
            let x_in = s.scale_model_input(&latents, t).unwrap();
            let out = (&a * &x_in + &b * (t / 1000.0)).to_kind(kind);
            latents = s.step(&out, t, &latents, &mut g).unwrap_or_else(|e| panic!("{what}: step {i}: {e:#}"));
            check(i + 1, &latents);
        }
        checked += 1;
    }
    assert!(checked > 0, "no fixture cases for {samplers:?} in {family}");
    eprintln!("{family} {samplers:?}: {checked} cases, worst relative error {worst:e}");
    checked
}
