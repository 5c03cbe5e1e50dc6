//! CLIP as Stable Diffusion uses it: the BPE tokenizer, the text encoders (CLIPTextModel for SD1/SD2,
//! CLIPTextModelWithProjection for SDXL's second encoder) and the vision tower of the safety checker.

pub mod tokenizer;
pub mod vocab;

pub use tokenizer::{ClipTokenizer, PadToken};
