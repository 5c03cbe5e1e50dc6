//! Metadata written next to every generated image: A1111 `parameters`, an XMP packet with the IPTC "trained
//! algorithmic media" source type, the GB 45438 `AIGC` implicit label, and a record of the watermark choice.
//! The pipeline calls [`label_chunks`] and [`encode_png`], which writes the chunks before IDAT so streaming readers
//! see them.

pub mod aigc;
pub mod infotext;
mod png_write;
mod time;
pub mod xmp;

pub use aigc::AigcLabel;
pub use infotext::Infotext;
pub use png_write::encode_png;

use crate::watermark::WatermarkOutcome;
use serde::{Deserialize, Serialize};

/// A PNG text chunk. ASCII goes to `tEXt`; anything else, or `force_itxt`, to uncompressed `iTXt`, because raw
/// UTF-8 in `tEXt` is read back as Latin-1 mojibake by Pillow-based tools (A1111 PNG Info, ComfyUI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextChunk {
    pub keyword: String,
    pub text: String,
    /// `iTXt` even for ASCII (XMP must be `iTXt` with keyword `XML:com.adobe.xmp`).
    pub force_itxt: bool,
}

impl TextChunk {
    pub fn new(keyword: &str, text: &str) -> Self {
        Self { keyword: keyword.into(), text: text.into(), force_itxt: false }
    }
    pub fn itxt(keyword: &str, text: &str) -> Self {
        Self { keyword: keyword.into(), text: text.into(), force_itxt: true }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Txt2Img,
    Img2Img,
    Inpaint,
}

impl Mode {
    /// IPTC digital source type: pure generation vs. AI edit of an existing picture.
    pub fn digital_source_type(self) -> &'static str {
        match self {
            Mode::Txt2Img => xmp::TRAINED,
            Mode::Img2Img | Mode::Inpaint => xmp::COMPOSITE,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerationInfo {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    /// A1111 sampler name, e.g. "Euler a", "DPM++ 2M".
    pub sampler: String,
    /// A1111 "Schedule type", e.g. "Karras"; None omits it.
    pub schedule: Option<String>,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model_name: Option<String>,
    /// First 10 hex digits of the checkpoint file's sha256 (A1111's "Model hash").
    pub model_hash: Option<String>,
    pub clip_skip: Option<u32>,
    /// img2img / inpaint only.
    pub denoising_strength: Option<f64>,
    pub mode: Mode,
    /// None = the pipeline did not try (recorded as "none").
    pub watermark: Option<WatermarkOutcome>,
    pub tool_name: String,
    pub tool_version: String,
    /// GB 45438 ContentProducer; defaults to the tool name when None.
    pub producer: Option<String>,
    /// Unique id for this image (GB 45438 ProduceID); generated when None.
    pub produce_id: Option<String>,
    /// Extra A1111 pairs appended before `Version`.
    pub extra: Vec<(String, String)>,
}

impl Default for GenerationInfo {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            sampler: "Euler a".into(),
            schedule: None,
            cfg_scale: 7.0,
            seed: 0,
            width: 512,
            height: 512,
            model_name: None,
            model_hash: None,
            clip_skip: None,
            denoising_strength: None,
            mode: Mode::Txt2Img,
            watermark: None,
            tool_name: "sd-rs".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            producer: None,
            produce_id: None,
            extra: Vec::new(),
        }
    }
}

/// Shortest text that reads back to the same float ("7", "0.75").
fn num(v: f64) -> String {
    format!("{v}")
}

/// How the watermark decision reads in metadata.
pub fn watermark_record(w: Option<&WatermarkOutcome>) -> String {
    match w {
        Some(WatermarkOutcome::Applied { payload, method, .. }) => {
            format!("invisible-watermark {method} {payload}")
        }
        Some(WatermarkOutcome::NotAppliedTooSmall { width, height }) => {
            format!("not applied (image {width}x{height} is under 256x256 pixels)")
        }
        Some(WatermarkOutcome::Disabled) => "none (--no-watermark)".into(),
        None => "none".into(),
    }
}

/// A1111 key/value pairs for `info`, in A1111's order.
pub fn infotext_params(info: &GenerationInfo) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| p.push((k.to_string(), v));
    push("Steps", info.steps.to_string());
    push("Sampler", info.sampler.clone());
    if let Some(s) = &info.schedule {
        push("Schedule type", s.clone());
    }
    push("CFG scale", num(info.cfg_scale));
    push("Seed", info.seed.to_string());
    push("Size", format!("{}x{}", info.width, info.height));
    if let Some(h) = &info.model_hash {
        push("Model hash", h.clone());
    }
    if let Some(m) = &info.model_name {
        push("Model", m.clone());
    }
    if let Some(d) = info.denoising_strength {
        push("Denoising strength", num(d));
    }
    if let Some(c) = info.clip_skip {
        push("Clip skip", c.to_string());
    }
    push("Watermark", watermark_record(info.watermark.as_ref()));
    for (k, v) in &info.extra {
        push(k, v.clone());
    }
    push("Version", format!("{} {}", info.tool_name, info.tool_version));
    p
}

/// Fresh id for one image: a UUID-formatted sha256 of the time, process id, a counter and the settings. Unique in
/// practice; not a secret and not a signature.
pub fn new_produce_id(info: &GenerationInfo) -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(time::now_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(info.seed.to_le_bytes());
    h.update(info.prompt.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

fn chunk(keyword: &str, text: String, force_itxt: bool) -> TextChunk {
    let force_itxt = force_itxt || !text.is_ascii();
    TextChunk { keyword: keyword.into(), text, force_itxt }
}

/// Every text chunk the pipeline writes for one image: `parameters`, `XML:com.adobe.xmp`, `AIGC`.
pub fn label_chunks(info: &GenerationInfo) -> Vec<TextChunk> {
    let params = infotext::build(&info.prompt, &info.negative_prompt, &infotext_params(info));
    let tool = format!("{} {}", info.tool_name, info.tool_version);
    let produce_id = info.produce_id.clone().unwrap_or_else(|| new_produce_id(info));
    let label = AigcLabel::generated(info.producer.as_deref().unwrap_or(&info.tool_name), &produce_id);
    let aigc = label.to_json();
    let wm = watermark_record(info.watermark.as_ref());
    let date = time::rfc3339_utc(time::now_nanos());
    let packet = xmp::build(&xmp::XmpFields {
        digital_source_type: info.mode.digital_source_type(),
        creator_tool: &tool,
        create_date: &date,
        aigc_json: &aigc,
        watermark: &wm,
    });
    vec![chunk("parameters", params, false), chunk(xmp::KEYWORD, packet, true), chunk("AIGC", aigc, false)]
}
