//! sd-provenance: disclosure of AI-generated images — invisible watermark, A1111 parameters, XMP / AIGC labels,
//! a visible label, and an inspector that reads all of them back. No LibTorch; the one C library is libwebp (lossy WebP), built from source by its crate.
//!
//! | module | what |
//! |---|---|
//! | [`watermark`] | invisible watermark, bit-compatible with PyPI `invisible-watermark` (dwtDct, dwtDctSvd): embed, detect |
//! | [`metadata`] | A1111 `parameters`, XMP source type, GB 45438 `AIGC` label: written into PNGs, parsed back |
//! | [`visible_label`] | the visible "AI generated" corner label, drawn from embedded glyphs |
//! | [`png_chunks`] | a CRC-checked PNG chunk reader (text chunks, header, which other chunks exist) |
//! | [`jpeg_meta`] | JPEG metadata (EXIF, XMP, comments) read from marker segments, no pixel decoding |
//! | [`formats`] | PNG / JPEG / WebP output carrying the same labels (EXIF UserComment as A1111 writes it, XMP) |
//! | [`credentials`] | C2PA Content Credentials (c2pa crate): signing, local signing CA, validation, opt-outs |
//! | [`optout`] | reservations against AI training an image carries: PLUS DataMining, TDMRep, noai, C2PA |
//! | [`inspect`] | `sd inspect`: everything an image says about how it was made |

pub mod credentials;
pub mod formats;
pub mod inspect;
pub mod jpeg_meta;
pub mod metadata;
pub mod optout;
pub mod png_chunks;
pub mod visible_label;
pub mod watermark;
