//! sd-models's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-models --test it MODULE::`.

mod attention_modes;
mod clip_text_model;
mod clip_tokenizer;
mod controlnet;
mod controlnet_single_file;
mod convert;
mod convert_safety;
mod ip_adapter;
mod safety_checker;
mod sd3_fp8;
mod sd3_single_file;
mod t5;
mod t5_spiece;
mod taesd;
mod transformer_sd3;
mod unet;
mod unet_extensions;
mod unet_split;
mod vae_kl;
mod vae_tiling;
