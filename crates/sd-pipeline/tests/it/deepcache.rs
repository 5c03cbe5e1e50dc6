//! `--cache deepcache` against PyPI `DeepCache` 0.1.1's `DeepCacheSDHelper` on diffusers' `StableDiffusionPipeline`
//! (fixtures/deepcache, made by scripts/fixtures/gen_81_deepcache.py): the tiny SD1 model, Euler, 7 steps, CFG 7,
//! intervals 2 and 3 at branch 0, interval 3 at branch 1 and interval 2 at branch 3 (inside the deeper level), and
//! the uncached run. The latents after every step must equal the helper's within 1e-4 (float32; measured worst
//! error 3.5e-5 here, of the order of the uncached run's 2.6e-5), the final image within 1e-3 (measured 1.0e-6).
//! A branch beyond the UNet's levels is refused (ControlNet with a cache: sd-cli's `step_cache_cli`).

use sd_pipeline::generate::{Event, Flow};
use sd_pipeline::loader::{LoadOptions, StableDiffusion};
use sd_pipeline::request::{GenerationRequest, StepCache};
use sd_test_support::{fixtures, max_abs_diff};
use serde_json::Value;
use tch::{Kind, Tensor};

const LATENT_TOL: f64 = 1e-4;
const IMAGE_TOL: f64 = 1e-3;

fn load() -> StableDiffusion {
    let mut opts = LoadOptions::cpu(Kind::Float);
    opts.load_safety_checker = false;
    StableDiffusion::load(fixtures().join("models/sd1").to_str().unwrap(), opts).unwrap()
}

fn request(case: &Value) -> GenerationRequest {
    let s = |k: &str| case[k].as_str().unwrap().to_string();
    let n = |k: &str| case[k].as_f64().unwrap();
    let mut req = GenerationRequest::txt2img(&s("prompt"), n("width") as i64, n("height") as i64);
    req.negative_prompt = s("negative");
    req.steps = n("steps") as usize;
    req.cfg_scale = n("cfg");
    req.sampler = s("sampler").parse().unwrap();
    req.seed = n("seed") as u64;
    let interval = n("interval") as usize;
    if interval > 1 {
        req.cache = StepCache::DeepCache { interval, branch: n("branch") as usize };
    }
    req
}

#[test]
fn every_step_matches_deepcache_helper() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("deepcache/cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 5, "the full fixture set");
    let sd = load();
    let mut report = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let req = request(case);
        let expected = Tensor::read_safetensors(fixtures().join(format!("deepcache/{name}.safetensors"))).unwrap();
        let get = |k: &str| expected.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).unwrap();
        let (want_latents, want_image) = (get("latents"), get("image"));
        let mut steps = Vec::new();
        let out = sd
            .generate(&req, &mut |e| {
                if let Event::Step(s) = &e {
                    steps.push(s.latents.to_kind(Kind::Float).copy());
                }
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(steps.len(), req.steps, "{name}");
        let worst = steps
            .iter()
            .enumerate()
            .map(|(i, got)| max_abs_diff(got, &want_latents.get(i as i64)))
            .fold(0.0f64, f64::max);
        let image = Tensor::stack(&out.images, 0).permute([0, 2, 3, 1]);
        let image_err = max_abs_diff(&image, &want_image);
        report.push(format!("{name}: latents {worst:.2e}, image {image_err:.2e}"));
        assert!(worst <= LATENT_TOL, "{name}: per-step latents differ by {worst:.3e} (tolerance {LATENT_TOL})");
        assert!(image_err <= IMAGE_TOL, "{name}: image differs by {image_err:.3e}");
        // Full steps at 0, N, 2N, … (DeepCache's uniform mode); the rest shallow.
        let shallow = match req.cache {
            StepCache::DeepCache { interval, .. } => req.steps - req.steps.div_ceil(interval),
            StepCache::Off => 0,
        };
        assert_eq!((out.unet_calls, out.shallow_calls), (req.steps, shallow), "{name}");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn refuses_what_it_cannot_cache() {
    let sd = load();
    let mut req = GenerationRequest::txt2img("a red square", 64, 64);
    req.steps = 2;
    // The tiny UNet has two levels: branches 0..=5.
    req.cache = StepCache::DeepCache { interval: 2, branch: 6 };
    let err = sd.generate(&req, &mut sd_pipeline::generate::quiet()).err().expect("branch beyond the levels");
    assert!(format!("{err:#}").contains("this UNet has 2 levels"), "{err:#}");
    req.cache = StepCache::DeepCache { interval: 2, branch: 5 };
    sd.generate(&req, &mut sd_pipeline::generate::quiet()).expect("the deepest branch runs");
}
