//! sd-pipeline's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-pipeline --test it MODULE::`.

mod robust;

mod controlnet;
mod controlnet_units;
mod deepcache;
mod diffusers_parity;
mod hires;
mod ip_adapter;
mod offload;
mod prompt_chunks;
mod prompt_conditioning;
mod prompt_editing;
mod prompt_extras_parity;
mod prompt_lora;
mod prompt_schedule;
mod refiner;
mod robustness;
mod sd3_emphasis;
mod sd3_pipeline;
mod sd3_samplers;
mod sd3_single_file;
mod step_callback;
