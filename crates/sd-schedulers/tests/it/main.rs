//! sd-schedulers's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-schedulers --test it MODULE::`.

mod common;

mod contract;
mod fixtures_bf16;
mod fixtures_ddim;
mod fixtures_dpm;
mod fixtures_euler;
mod fixtures_flow;
mod fixtures_ksecond;
mod fixtures_lcm;
mod fixtures_multistep_classic;
mod fixtures_sde;
mod fixtures_unipc;
mod registry;
