//! The pipeline's per-step callback: what it sees, and what an interrupt returns (the latents reached, decoded).

use sd_pipeline::generate::{Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::GenerationRequest;
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn load() -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1"));
    StableDiffusion::load(dir.to_str().expect("utf-8 path"), opts).expect("load sd1 fixture")
}

fn request() -> GenerationRequest {
    let mut req = GenerationRequest::txt2img("a red square", 64, 64);
    req.steps = 6;
    req.sampler = "euler-a".parse().unwrap();
    req.seed = 7;
    req
}

#[test]
fn callback_sees_every_step_and_interrupt_returns_the_latents_reached() {
    let sd = load();
    let req = request();
    let mut seen = Vec::new();
    let mut at_three: Option<Tensor> = None;
    let full = sd
        .generate(&req, &mut |e| {
            if let Event::Step(s) = &e {
                seen.push((s.index, s.total, s.latents.size()));
                if s.index == 3 {
                    at_three = Some(s.latents.copy());
                }
            }
            Flow::Continue
        })
        .expect("full run");
    assert!(!full.interrupted);
    assert_eq!(full.steps_done, 6);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert!(
        seen.iter().all(|s| s.1 == 6 && s.2 == vec![1, 4, 64 / sd.vae_scale_factor(), 64 / sd.vae_scale_factor()]),
        "{seen:?}"
    );

    // Interrupted after step 3: the image is the decode of exactly the latents the callback saw at step 3 (the
    // same seed draws the same ancestral noise up to there).
    let part = sd
        .generate(&req, &mut |e| match e {
            Event::Step(s) if s.index == 3 => Flow::Interrupt,
            _ => Flow::Continue,
        })
        .expect("interrupted run");
    assert!(part.interrupted);
    assert_eq!(part.steps_done, 3);
    assert_eq!(part.images.len(), 1);
    let expected = sd.decode(&at_three.expect("step 3 seen")).expect("decode");
    let diff = (&part.images[0] - expected.get(0)).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0, "interrupted image differs from the step-3 latents decoded");
    let full_diff = (&part.images[0] - &full.images[0]).abs().max().double_value(&[]);
    assert!(full_diff > 1e-3, "an interrupt at step 3 of 6 must not give the finished image");

    // Interrupted before any step: nothing to decode.
    let none = sd
        .generate(&req, &mut |e| match e {
            Event::Phase("denoise") => Flow::Interrupt,
            _ => Flow::Continue,
        })
        .expect("run interrupted at once");
    assert!(none.interrupted && none.steps_done == 0 && none.images.is_empty());
}
