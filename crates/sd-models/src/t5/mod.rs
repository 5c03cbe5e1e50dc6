//! T5 v1.1 encoder (SD3's `text_encoder_3`) and its SentencePiece-Unigram tokenizer (`tokenizer_3`).
//!
//! | file | what |
//! |---|---|
//! | `config` | `T5Config`, checked against named limits |
//! | `encoder` | `T5EncoderModel` (relative position buckets, gated-GELU feed-forward, RMS layer norm) |
//! | `tokenizer` | `tokenizer_3/tokenizer.json` (or `spiece.model`) through the `tokenizers` crate, padded / truncated as SD3 does |
//! | `spiece` | SentencePiece's `spiece.model` protobuf: pieces, scores, the normaliser's charsmap (bounded reader) |

pub mod config;
pub mod encoder;
pub mod spiece;
pub mod tokenizer;

pub use config::T5Config;
pub use encoder::T5EncoderModel;
pub use tokenizer::T5Tokenizer;
