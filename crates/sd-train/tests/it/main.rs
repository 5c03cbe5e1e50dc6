//! sd-train's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-train --test it MODULE::`.

mod common;

mod dataset_errors;
mod dcgan_step;
mod demo_model;
mod demo_scaffold;
mod opt_outs;
mod overfit;
mod run_resume;
mod schedules;
mod shapes;
mod train_step_parity;
