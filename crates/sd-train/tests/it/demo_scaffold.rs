//! The demo pipeline end to end at toy scale: scaffold (real CLIP tokenizer from `.sd-data/`), two VAE steps, one
//! UNet step from the scaffold's config; the result loads and generates through sd-pipeline.

use sd_models::clip::ClipTokenizer;
use sd_train::{demo, run, shapes, TrainConfig, Trainer};

#[test]
fn scaffold_vae_unet_generate() {
    let bpe = ClipTokenizer::default_bpe_path();
    assert!(bpe.is_file(), "{} is missing: run `cargo xtask setup` (it downloads the CLIP vocabulary)", bpe.display());
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    demo::scaffold(&base, &bpe, 0).expect("scaffold");
    let tok = ClipTokenizer::from_dir(&base.join("tokenizer")).expect("tokenizer folder loads");
    let direct = ClipTokenizer::from_bpe_file(&bpe, sd_models::clip::PadToken::EndOfText).expect("bpe");
    let caption = "a red circle on a blue background, top left";
    assert_eq!(tok.encode(caption).expect("ids"), direct.encode(caption).expect("ids"), "saved tokenizer = OpenAI BPE");

    let data = shapes::dataset("procedural:shapes:4", demo::SIZE, 0).expect("data");
    let losses = demo::train_vae(&base, &data, 2, 2, 1e-3, 0, |_, _| {}).expect("vae");
    assert!(losses.iter().all(|l| l.is_finite()));
    let mut cfg = TrainConfig::new(base.clone(), work.path().join("run"));
    cfg.unet_config = Some(base.join("unet/config.json"));
    cfg.max_steps = 1;
    cfg.batch_size = 2;
    let mut t = Trainer::new(cfg, data).expect("trainer");
    run::run(&mut t, &mut |_| {}).expect("unet step");
    let sd = sd_pipeline::loader::StableDiffusion::load(
        &work.path().join("run").to_string_lossy(),
        sd_pipeline::loader::LoadOptions {
            load_safety_checker: false,
            ..sd_pipeline::loader::LoadOptions::cpu(tch::Kind::Float)
        },
    )
    .expect("demo folder loads as a pipeline");
    let mut req = sd_pipeline::request::GenerationRequest::txt2img(caption, 32, 32);
    req.steps = 2;
    let out = sd.generate(&req, &mut sd_pipeline::generate::quiet()).expect("generate");
    assert_eq!(out.images[0].size(), [3, 32, 32]);
}
