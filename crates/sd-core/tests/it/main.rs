//! sd-core's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-core --test it MODULE::`.

mod image_io;
mod onednn;
mod parallel;
mod resample;
mod rng_torch;
mod weights_errors;
mod weights_layout;
mod winograd;
