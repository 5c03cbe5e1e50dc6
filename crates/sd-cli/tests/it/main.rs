//! sd-cli's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-cli --test it MODULE::`.

mod server;

mod c2pa_readers;
mod cli_errors;
mod controlnet_single_file;
mod controlnet_units;
mod convert_cli;
mod convert_generate;
mod doctor;
mod hostile_inputs;
mod inspect;
mod ip_adapter_cli;
mod ip_adapter_units;
mod offload;
mod output_formats;
mod perf_flags;
mod prompt_extras;
mod queue_redis;
mod refiner_cli;
mod safety;
mod sd3_cli;
mod sd3_single_file_cli;
mod serve_api;
mod serve_browser;
mod serve_clients;
mod serve_robustness;
mod step_cache_cli;
mod tokenize;
mod train_cli;
mod train_opt_outs;
