//! sd-provenance's integration tests, one module per concern, linked into one test binary (LibTorch is linked
//! once per crate, not once per file). Run one module with `cargo test -p sd-provenance --test it MODULE::`.

mod credentials;
mod formats;
mod inspect;
mod metadata;
mod optout_signals;
mod visible_label;
mod watermark_confidence;
mod watermark_reference;
mod watermark_svd_reference;
