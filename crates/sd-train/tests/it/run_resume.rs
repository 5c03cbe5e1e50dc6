//! The training loop's files (checkpoints as diffusers folders, loss log) and exact resumption: stopping at a
//! checkpoint and resuming gives bit-identical weights and optimizer state to an uninterrupted run.

use crate::common;

use sd_train::{run, Trainer};

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn resume_continues_bit_identically() {
    let full = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::config(full.path().to_path_buf());
    cfg.max_steps = 6;
    cfg.checkpoint_every = Some(3);
    cfg.ema_decay = Some(0.99);
    cfg.snr_gamma = Some(5.0);
    cfg.batch_size = 1;
    cfg.grad_accum = 2;
    let mut t = Trainer::new(cfg.clone(), common::dataset(common::two_images())).expect("trainer");
    run::run(&mut t, &mut |_| {}).expect("full run");
    let log = std::fs::read_to_string(full.path().join("loss.jsonl")).expect("loss log");
    assert_eq!(log.lines().count(), 6, "one loss line per step");
    for dir in ["checkpoint-3", "checkpoint-6", "."] {
        let d = full.path().join(dir);
        for f in [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "text_encoder/config.json",
            "tokenizer/tokenizer.json",
            "scheduler/scheduler_config.json",
        ] {
            assert!(d.join(f).is_file(), "{} lacks {f}", d.display());
        }
    }
    assert!(full.path().join("checkpoint-3/training_state.json").is_file());

    let resumed = tempfile::tempdir().expect("tempdir");
    let mut cfg2 = cfg.clone();
    cfg2.output = resumed.path().to_path_buf();
    cfg2.resume = Some(full.path().join("checkpoint-3"));
    let mut t2 = Trainer::new(cfg2, common::dataset(common::two_images())).expect("resumed trainer");
    assert_eq!(t2.step, 3);
    run::run(&mut t2, &mut |_| {}).expect("resumed run");
    for f in [
        "checkpoint-6/unet/diffusion_pytorch_model.safetensors",
        "checkpoint-6/training_state.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        assert!(read(&full.path().join(f)) == read(&resumed.path().join(f)), "{f} differs after resuming");
    }
    // The final model loads as a pipeline.
    let sd = sd_pipeline::loader::StableDiffusion::load(
        &full.path().to_string_lossy(),
        sd_pipeline::loader::LoadOptions {
            load_safety_checker: false,
            ..sd_pipeline::loader::LoadOptions::cpu(tch::Kind::Float)
        },
    );
    assert!(sd.is_ok(), "final folder does not load: {:#}", sd.err().map(|e| e.to_string()).unwrap_or_default());
}

#[test]
fn resume_with_other_settings_is_refused() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::config(out.path().to_path_buf());
    cfg.max_steps = 1;
    let mut t = Trainer::new(cfg.clone(), common::dataset(common::two_images())).expect("trainer");
    run::run(&mut t, &mut |_| {}).expect("run");
    let mut other = cfg;
    other.seed = 8;
    other.resume = Some(out.path().join("checkpoint-1"));
    let err = Trainer::new(other, common::dataset(common::two_images())).err().expect("must refuse").to_string();
    assert!(err.contains("seed 7") && err.contains("same settings"), "unexpected error: {err}");
}
