//! CLIP as Stable Diffusion uses it: the BPE tokenizer, the text encoders (CLIPTextModel for SD1/SD2,
//! CLIPTextModelWithProjection for SDXL's second encoder), the vision tower of the safety checker, and the
//! vision tower with its projection (IP-Adapter's image encoder).

pub mod config;
pub mod encoder;
pub mod image_processor;
pub mod text_model;
pub mod tokenizer;
pub mod vision_model;
pub mod vision_projection;
pub mod vocab;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use image_processor::ClipImageProcessor;
pub use text_model::{ClipTextModel, ClipTextOutput};
pub use tokenizer::{ClipTokenizer, PadToken};
pub use vision_model::{ClipVisionModel, ClipVisionOutput};
pub use vision_projection::{ClipVisionModelWithProjection, ClipVisionProjectionOutput};
