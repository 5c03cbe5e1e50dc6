//! Prompt text → conditioning tensors, reading prompts the way AUTOMATIC1111's web UI does.
//!
//! | module | what |
//! |---|---|
//! | [`parser`] | `(word:1.3)` / `[word]` / escapes / `BREAK` → (text, weight) runs |
//! | [`chunks`] | runs → 77-token chunks (75 + start/end), comma back-tracking, embedding slots |
//! | [`emphasis`] | weights applied to the encoder output (original with mean restoration, no-norm, ignore, none) |
//! | [`encoder`] | the [`TextEncoder`] trait over a tokenizer + text model pair, and [`TextEncoders`] |
//! | [`clip_encoder`] | [`TextEncoder`] for sd-models' CLIP tokenizer + text model |
//! | [`embeddings`] | textual-inversion embedding files (safetensors), [`embedding_pt`] for pickled ones |
//! | [`lora`] | LoRA files (kohya/A1111, diffusers/PEFT) merged into component weights |
//! | [`schedule`] | prompt editing `[from:to:when]` and alternation `[a\|b]` → per-step texts (A1111's timelines) |
//! | [`composable`] | `AND` with weights (composable diffusion): sub-prompts, their schedules, the negative's |
//! | [`scheduled`] | the texts of all schedules encoded once each, and the conditioning in force at a step |
//! | [`conditioning`] | [`encode_prompt_pair`]: clip skip, SDXL dual encoders and pooled output, prompt/negative padding |

pub mod chunks;
pub mod clip_encoder;
pub mod composable;
pub mod conditioning;
pub mod embedding_pt;
pub mod embeddings;
pub mod emphasis;
pub mod encoder;
pub mod lora;
pub mod parser;
pub mod schedule;
pub mod scheduled;

pub use clip_encoder::ClipPair;
pub use conditioning::{encode_prompt, encode_prompt_pair, Conditioning, EncoderStyle, PromptSettings};
pub use emphasis::Emphasis;
pub use encoder::{EncoderOutput, SpecialIds, TextEncoder, TextEncoders};
pub use parser::parse_prompt_attention;
