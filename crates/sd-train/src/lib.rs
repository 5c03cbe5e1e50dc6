//! sd-train: fine-tuning a Stable Diffusion UNet (or training one from a config) on captioned images.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`config::TrainConfig`]: every setting of a run |
//! | [`demo`] | the `sd-tiny-shapes` demo: base-folder scaffold, VAE training, prompt-adherence scoring and the guidance scale chosen on validation prompts |
//! | [`dataset`] | image + caption folders / `metadata.jsonl`, resizing and cropping, epoch shuffling |
//! | [`optout`] | rights holders' reservations against AI training: which images are left out, and why |
//! | [`record`] | `dataset_manifest.jsonl` and the `README.md` model card written with every checkpoint |
//! | [`loss`] | forward diffusion (`add_noise`), ε / v / x₀ targets, MSE with optional Min-SNR-γ weighting |
//! | [`optim`] | AdamW identical to `torch.optim.AdamW`, `clip_grad_norm_` |
//! | [`lr`] | constant / cosine schedules with linear warmup (diffusers `get_scheduler`) |
//! | [`ema`] | exponential moving average of the UNet weights |
//! | [`trainer`] | [`trainer::Trainer`]: models, seeded batches, one optimizer step |
//! | [`checkpoint`] | diffusers folders out, `training_state.*` for `--resume` |
//! | [`run`] | the loop: steps, loss log, checkpoints, preview samples |
//! | [`shapes`] | `procedural:shapes` demo dataset, its held-out and validation scenes, and the shape/colour/position adherence checker |

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod ema;
pub mod loss;
pub mod lr;
pub mod optim;
pub mod optout;
pub mod record;
pub mod run;
pub mod shapes;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::Trainer;
