//! Prompt editing `[a:b:N]`, alternation `[a|b]` (with a scheduled negative prompt) and `AND` with weights (one
//! part scheduled) through the whole pipeline, against diffusers on the tiny SD1 model (fixtures/prompt_editing,
//! from scripts/fixtures/gen_93_prompt_editing.py: the pipeline with `prompt_embeds` swapped per step, and a
//! composable-diffusion loop over diffusers' components). Tolerances as the other pipeline tests: final latents
//! and float image within 1e-3, 8-bit image within one level on ≥ 99.9 % of values.
use sd_pipeline::generate::{Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::prompt::composable::PromptPlan;
use sd_pipeline::prompt::schedule::Pass;
use sd_pipeline::request::GenerationRequest;
use sd_test_support::fixtures;
use serde_json::Value;
use tch::{Kind, Tensor};

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn prompt_editing_and_composition_match_diffusers() {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("prompt_editing/cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 4);
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("prompt_editing/reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let n = |k: &str| c[k].as_f64().unwrap();
        let mut req = GenerationRequest::txt2img(c["prompt"].as_str().unwrap(), n("width") as i64, n("height") as i64);
        req.negative_prompt = c["negative"].as_str().unwrap().into();
        req.steps = n("steps") as usize;
        req.cfg_scale = n("cfg");
        req.seed = n("seed") as u64;
        req.sampler = "Euler".parse().unwrap();
        req.validate(sd.vae_scale_factor()).unwrap();

        // Our schedules give the per-step texts the reference used.
        let plan = PromptPlan::new(&req.prompt, &req.negative_prompt).unwrap();
        let sched = plan.schedules(Pass::Base { steps: req.steps });
        let texts = |s: &sd_pipeline::prompt::schedule::Schedule| -> Vec<String> {
            (0..req.steps).map(|i| s.at(i).to_string()).collect()
        };
        if let Some(parts) = c["parts"].as_array() {
            assert_eq!(sched.parts.len(), parts.len(), "{name}");
            for ((w, s), p) in sched.parts.iter().zip(parts) {
                assert_eq!(*w, p["weight"].as_f64().unwrap(), "{name}");
                assert_eq!(texts(s), strings(&p["per_step"]), "{name}");
            }
        } else {
            assert_eq!(sched.parts.len(), 1);
            assert_eq!(texts(&sched.parts[0].1), strings(&c["per_step"]), "{name}");
            assert_eq!(texts(&sched.negative), strings(&c["negative_per_step"]), "{name}");
        }

        let mut last: Option<Tensor> = None;
        let mut on_event = |e: Event<'_>| {
            if let Event::Step(s) = e {
                last = Some(s.latents.copy());
            }
            Flow::Continue
        };
        let out = sd.generate(&req, &mut on_event).unwrap();
        let latents = last.unwrap();
        let lat_ref = &reference[&format!("{name}_latents")];
        let lat_max = (&latents - lat_ref).abs().max().double_value(&[]);
        let expected = &reference[&format!("{name}_image")];
        let ours = Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]);
        let max = (&ours - expected).abs().max().double_value(&[]);
        let q = |t: &Tensor| (t * 255.0).round();
        let within = (q(&ours) - q(expected)).abs().le(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!(
            "{name}: latents max|Δ| {lat_max:.2e}, image max|Δ| {max:.2e}, within one level {:.4} %",
            within * 100.0
        );
        assert!(lat_max <= 1e-3, "{name}: latents differ ({lat_max})");
        assert!(max <= 1e-3 && within >= 0.999, "{name}: differs from diffusers ({max}, {within})");
        let unet_rows = if c["parts"].is_array() { 3 } else { 2 };
        assert_eq!(out.unet_calls, req.steps, "{name}: one batched UNet call per step ({unet_rows} rows)");

        // The editing really changes the result: the first per-step text alone gives other latents (the tiny
        // random model's decoder is nearly text-blind, so the latents are what tell).
        let mut plain = req.clone();
        plain.prompt = "a red circle".into();
        plain.negative_prompt = "blurry".into();
        let mut plain_last: Option<Tensor> = None;
        let mut on_event = |e: Event<'_>| {
            if let Event::Step(s) = e {
                plain_last = Some(s.latents.copy());
            }
            Flow::Continue
        };
        sd.generate(&plain, &mut on_event).unwrap();
        let diff = (plain_last.unwrap() - lat_ref).abs().max().double_value(&[]);
        println!("{name}: plain prompt latents max|Δ| {diff:.2e}");
        assert!(diff > 2e-2, "{name}: the plain prompt gives the same latents ({diff})");
    }
}

#[test]
fn bad_prompt_syntax_falls_back_and_limits_are_errors() {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let sd = StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap();
    let run = |prompt: &str, cfg: f64| {
        let mut req = GenerationRequest::txt2img(prompt, 32, 32);
        req.steps = 2;
        req.cfg_scale = cfg;
        sd.generate(&req, &mut sd_pipeline::generate::quiet())
    };
    // A1111 keeps malformed syntax literal: these run (no panic) like any text.
    for p in ["a [b:c:d:e]", "a | b", "[unbalanced", "((a][:b:c [d:3]", "a\\", "[a:b:1e999]", "AND", "x :"] {
        run(p, 7.0).unwrap_or_else(|e| panic!("{p:?}: {e:#}"));
    }
    let err = |prompt: &str, cfg: f64| format!("{:#}", run(prompt, cfg).err().expect("an error"));
    let many = vec!["x"; sd_core::limits::PROMPT_MAX_AND_PARTS + 1].join(" AND ");
    assert!(err(&many, 7.0).contains("prompt AND parts limit"));
    let deep = "[".repeat(100) + "a" + &"]".repeat(100);
    assert!(err(&deep, 7.0).contains("prompt nesting limit"));
    assert!(err("a AND b", 1.0).contains("classifier-free guidance"));
}
