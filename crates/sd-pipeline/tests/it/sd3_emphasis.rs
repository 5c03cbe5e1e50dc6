//! A1111 prompt syntax on SD3 against the reference of scripts/fixtures/gen_99_sd3_emphasis.py (A1111's SD3
//! conditioning re-implemented over the transformers encoders of the tiny SD3 pipeline): weights, `[…]`, escapes,
//! `BREAK`, a prompt over 75 tokens (two CLIP chunks), the four emphasis modes, a text per encoder and the empty
//! prompt; prompt_embeds within 1e-5 and pooled within 1e-4. Then a three-step txt2img run whose two-chunk weighted
//! prompt and one-chunk negative are padded to the same length, against diffusers' StableDiffusion3Pipeline fed the
//! reference embeddings: latents within 1e-4, images within 1e-3 (float). Measured worst: embeddings 4.8e-7,
//! pooled bit-identical, latents 1.7e-6, images 6.0e-7.
//! A plain prompt's encoding is bit-identical to diffusers' layout computed directly with the same encoders.

use sd_pipeline::prompt::Emphasis;
use sd_pipeline::sd3::{Sd3Pipeline, Sd3Request};
use sd_test_support::{fixtures, max_abs_diff};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn dir() -> std::path::PathBuf {
    fixtures().join("sd3_emphasis")
}

fn read(name: &str) -> HashMap<String, Tensor> {
    let p = dir().join(name);
    Tensor::read_safetensors(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (gen_99_sd3_emphasis.py)", p.display()))
        .into_iter()
        .collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).expect("cases.json")).unwrap()
}

#[test]
fn encoded_prompts_match_a1111_reference() {
    let m = meta();
    let pipe = Sd3Pipeline::load(&fixtures().join("models/sd3"), Kind::Float, Device::Cpu, false).unwrap();
    let r = read("encode.safetensors");
    let len = m["max_sequence_length"].as_u64().unwrap() as usize;
    let (mut worst_e, mut worst_p) = (0f64, 0f64);
    for c in m["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let texts: Vec<String> = c["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
        let emphasis: Emphasis = c["emphasis"].as_str().unwrap().parse().unwrap();
        let texts: [String; 3] = texts.try_into().unwrap();
        let got = pipe.encode_texts(&texts, len, emphasis).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (want_e, want_p) = (&r[&format!("{name}.prompt_embeds")], &r[&format!("{name}.pooled")]);
        assert_eq!(got.prompt_embeds.size(), want_e.size(), "{name}");
        assert_eq!(got.clip_chunks, c["clip_chunks"].as_i64().unwrap(), "{name}");
        let (de, dp) = (max_abs_diff(&got.prompt_embeds, want_e), max_abs_diff(&got.pooled, want_p));
        println!("{name:16} embeds err {de:.2e}  pooled err {dp:.2e}");
        assert!(de <= 1e-5 && dp <= 1e-4, "{name}: embeds off by {de}, pooled by {dp}");
        (worst_e, worst_p) = (worst_e.max(de), worst_p.max(dp));
    }
    println!("worst: embeds {worst_e:.2e}, pooled {worst_p:.2e}");
}

/// A plain prompt of at most 75 tokens encodes bit for bit as before the prompt syntax came in: diffusers'
/// `encode_prompt` computed directly (each tokenizer's padded 77 ids, penultimate states, T5's padded ids).
#[test]
fn plain_prompts_are_bit_identical_to_diffusers_encoding() {
    let pipe = Sd3Pipeline::load(&fixtures().join("models/sd3"), Kind::Float, Device::Cpu, false).unwrap();
    let enc = pipe.encoders().unwrap();
    let (tok5, t5) = enc.t5.as_ref().unwrap();
    let _guard = tch::no_grad_guard();
    for text in ["a photograph of an astronaut riding a horse", "", "blurry, low quality"] {
        let clip = |e: &sd_pipeline::sd3::ClipEncoder| {
            let ids = Tensor::from_slice(&e.tokenizer.encode(text).unwrap()).unsqueeze(0);
            let out = e.model.forward(&ids).unwrap();
            (out.hidden_states[out.hidden_states.len() - 2].shallow_clone(), out.text_embeds.unwrap())
        };
        let ((l, pl), (g, pg)) = (clip(&enc.clip_l), clip(&enc.clip_g));
        let lg = Tensor::cat(&[l, g], -1);
        let lg = lg.constant_pad_nd([0, pipe.config.joint_attention_dim - lg.size()[2]]);
        let ids: Vec<i64> = tok5.encode(text, 16).unwrap().into_iter().map(i64::from).collect();
        let want = Tensor::cat(&[lg, t5.forward(&Tensor::from_slice(&ids).unsqueeze(0)).unwrap()], 1);
        let got = pipe.encode_prompt(text, 16).unwrap();
        assert!(got.prompt_embeds.equal(&want), "{text:?}: embeddings changed");
        assert!(got.pooled.equal(&Tensor::cat(&[pl, pg], -1)), "{text:?}: pooled changed");
    }
}

#[test]
fn weighted_txt2img_matches_diffusers_on_reference_embeddings() {
    let m = meta();
    let run = &m["run"];
    let pipe = Sd3Pipeline::load(&fixtures().join("models/sd3"), Kind::Float, Device::Cpu, false).unwrap();
    let mut req = Sd3Request::new(run["prompt"].as_str().unwrap());
    req.negative_prompt = run["negative_prompt"].as_str().unwrap().into();
    req.steps = run["num_inference_steps"].as_u64().unwrap() as usize;
    req.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    req.width = run["width"].as_i64().unwrap();
    req.height = run["height"].as_i64().unwrap();
    req.seed = run["seed"].as_u64().unwrap();
    req.max_sequence_length = run["max_sequence_length"].as_u64().unwrap() as usize;
    let prompts = pipe.encode(&req).unwrap();
    let uncond = prompts.uncond.as_ref().unwrap();
    assert_eq!((prompts.cond.clip_chunks, uncond.clip_chunks), (2, 2), "the negative is padded to two chunks");
    let (images, latents) = pipe.generate(&req).unwrap();
    let r = read("run.safetensors");
    let dl = max_abs_diff(&latents, &r["latents"]);
    let di = max_abs_diff(&images.permute([0, 2, 3, 1]), &r["image"]);
    println!("latents err {dl:.2e}  image err {di:.2e}");
    assert!(dl <= 1e-4 && di <= 1e-3, "latents off by {dl}, image by {di}");
}
