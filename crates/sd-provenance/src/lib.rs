//! sd-provenance: disclosure of AI-generated images — invisible watermark, A1111 parameters, XMP / AIGC labels,
//! a visible label, and an inspector that reads all of them back. Pure Rust (no LibTorch).

pub mod inspect;
pub mod jpeg_meta;
pub mod metadata;
pub mod png_chunks;
pub mod visible_label;
pub mod watermark;
