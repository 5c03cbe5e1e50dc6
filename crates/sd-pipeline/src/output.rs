//! Writing results: file names from a pattern, the safety decision, the invisible watermark, the optional
//! visible label, and PNG text chunks (A1111 `parameters`, XMP with IPTC DigitalSourceType, the GB 45438
//! AIGC label) — all on by default, every choice recorded in the file itself.

use crate::family::Family;
use crate::generate::Generated;
use crate::loader::StableDiffusion;
use crate::request::{GenerationRequest, Mode};
use anyhow::{bail, Context, Result};
use sd_core::atomic::{write_atomic, Overwrite};
use sd_core::image_io::{tensor_to_rgb, Range};
use sd_provenance::credentials::{self, ClaimInfo, Identity};
use sd_provenance::formats::{self, OutputFormat};
use sd_provenance::metadata::{label_chunks, GenerationInfo};
use sd_provenance::watermark::{self, Method, Payload, WatermarkOutcome};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// What to do with images the safety checker flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetyMode {
    /// Do not save flagged images (default when the model ships a checker).
    Block,
    /// Save them and say so.
    Warn,
    /// Do not run the checker.
    Off,
}

impl FromStr for SafetyMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "block" => Self::Block,
            "warn" => Self::Warn,
            "off" => Self::Off,
            other => bail!("--safety {other}: expected block, warn or off"),
        })
    }
}

/// How each image is finished before it is stored or sent: safety decision, upscale, visible label, watermark.
/// Shared by `sd generate` (files) and the server (bytes in a response), so both give the same image.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    pub watermark: bool,
    /// `Some("")` = the default label text.
    pub visible_label: Option<String>,
    pub safety: SafetyMode,
    /// Enlarge each image by this whole factor (Lanczos) before it is labelled and watermarked; 1 = as generated.
    /// For small models such as the 32 px demo: the watermark needs at least 256×256 pixels.
    pub upscale: u32,
    /// `None`: dwtDct for lossless formats (what Stable Diffusion's tools write and read), dwtDctSvd for JPEG and
    /// lossy WebP, whose compression erases dwtDct.
    pub watermark_method: Option<Method>,
    /// The encoded file's format; the server keeps PNG.
    pub format: OutputFormat,
    /// JPEG and lossy WebP quality 1–100.
    pub quality: u8,
    /// WebP only: lossless instead of lossy (A1111's `webp_lossless`).
    pub lossless: bool,
    /// Sign each file with C2PA Content Credentials as this identity; `None` = no manifest.
    pub c2pa: Option<Arc<Identity>>,
    /// img2img / inpainting: the init image file, recorded as the manifest's parent ingredient.
    pub init_file: Option<Arc<Vec<u8>>>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            watermark: true,
            visible_label: None,
            safety: SafetyMode::Block,
            upscale: 1,
            watermark_method: None,
            format: OutputFormat::Png,
            quality: formats::DEFAULT_JPEG_QUALITY,
            lossless: false,
            c2pa: None,
            init_file: None,
        }
    }
}

impl RenderOptions {
    /// The watermark method used for this format.
    pub fn method(&self) -> Method {
        self.watermark_method.unwrap_or(if self.format.is_lossy(self.lossless) {
            Method::DwtDctSvd
        } else {
            Method::DwtDct
        })
    }
}

/// How results are written to files.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    pub pattern: String,
    pub overwrite: bool,
    pub render: RenderOptions,
}

/// One result, for messages and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct SavedImage {
    /// `None` when the safety checker blocked the image.
    pub path: Option<PathBuf>,
    pub seed: u64,
    pub index_in_batch: usize,
    pub watermark: String,
    pub safety_checked: bool,
    pub flagged: bool,
}

impl SavedImage {
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) if self.flagged => {
                format!("wrote {} (flagged by the safety checker; saved because --safety warn)", p.display())
            }
            Some(p) => format!("wrote {} (watermark: {})", p.display(), self.watermark),
            None => "image blocked by the safety checker: not saved (use --safety warn to keep it)".into(),
        }
    }
}

/// One finished image in memory: the encoded file with every label, or nothing when the safety checker blocked it.
#[derive(Clone, Debug)]
pub struct RenderedImage {
    /// The encoded file in `format` (pixels, watermark, labels); `None` when blocked.
    pub bytes: Option<Vec<u8>>,
    pub format: OutputFormat,
    pub seed: u64,
    pub index_in_batch: usize,
    /// The A1111 `parameters` text stored in the file (A1111's "infotext").
    pub infotext: String,
    pub watermark: String,
    pub safety_checked: bool,
    pub flagged: bool,
}

/// Refuse a prompt that contains a term from the user's policy file (one term per line, `#` comments).
pub fn check_policy(file: &Path, prompt: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read policy file {}", file.display()))?;
    check_policy_terms(&text, &file.display().to_string(), prompt)
}

/// [`check_policy`] on a policy file's text already read (the server reads it once at start).
pub fn check_policy_terms(policy_text: &str, source: &str, prompt: &str) -> Result<()> {
    let lower = prompt.to_lowercase();
    for term in policy_text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if lower.contains(&term.to_lowercase()) {
            bail!("prompt refused by policy {source}: it contains `{term}`");
        }
    }
    Ok(())
}

/// Finish every image of `generated` in memory: safety check, upscale, visible label, watermark, PNG with labels.
pub fn render_outputs(
    sd: &StableDiffusion,
    req: &GenerationRequest,
    generated: &Generated,
    opts: &RenderOptions,
) -> Result<Vec<RenderedImage>> {
    let verdicts = match (&sd.safety, opts.safety) {
        (Some(checker), SafetyMode::Block | SafetyMode::Warn) if !generated.images.is_empty() => {
            let batch = tch::Tensor::f_stack(&generated.images, 0)?;
            let _streaming = sd.offload.activate(crate::offload::Group::SafetyChecker)?;
            Some(checker.check(&batch)?)
        }
        _ => None,
    };
    // The request's last model has run: with --offload nothing stays on the GPU between requests.
    sd.offload.park_all()?;
    let model_hash = crate::hash_cache::model_hash(sd);
    let card = model_card_ref(&sd.dir.root, &sd.name);
    let mut out = Vec::new();
    for (i, image) in generated.images.iter().enumerate() {
        let flagged = verdicts.as_ref().is_some_and(|v| v.get(i).is_some_and(|v| v.flagged));
        if flagged && opts.safety == SafetyMode::Block {
            out.push(RenderedImage {
                bytes: None,
                format: opts.format,
                seed: generated.seed,
                index_in_batch: i,
                infotext: String::new(),
                watermark: "none".into(),
                safety_checked: true,
                flagged,
            });
            continue;
        }
        let payload = if sd.info.family == Family::Sdxl { Payload::Sdxl } else { Payload::SdV1 };
        let model = ModelRef { name: &sd.name, hash: model_hash.as_deref() };
        let (bytes, infotext, outcome) = finish_image(image, &payload, model, opts, |outcome| {
            let mut info = generation_info(sd, req, generated, model_hash.clone(), i, outcome);
            if let Some(c) = &card {
                info.extra.push(("Model card".into(), c.clone()));
            }
            info
        })?;
        out.push(RenderedImage {
            bytes: Some(bytes),
            format: opts.format,
            seed: generated.seed,
            index_in_batch: i,
            infotext,
            watermark: sd_provenance::metadata::watermark_record(Some(&outcome)),
            safety_checked: verdicts.is_some(),
            flagged,
        });
    }
    Ok(out)
}

/// The model an image is labelled with: its name and, when known, A1111's short hash.
#[derive(Clone, Copy)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub hash: Option<&'a str>,
}

/// One image `[3, H, W]` in [0, 1] made into a finished file, the same for every model family: the optional
/// upscale and visible label, then the invisible watermark (last, so nothing is drawn over it), the generation
/// parameters `info` builds once it knows the watermark's outcome (plus the upscale's own keys), the format's
/// labels and, with an identity, signed Content Credentials. Returns (file bytes, A1111 infotext, watermark).
pub fn finish_image(
    image: &tch::Tensor,
    payload: &Payload,
    model: ModelRef<'_>,
    opts: &RenderOptions,
    info: impl FnOnce(&WatermarkOutcome) -> GenerationInfo,
) -> Result<(Vec<u8>, String, WatermarkOutcome)> {
    let mut rgb = tensor_to_rgb(image, Range::Unit)?;
    if opts.upscale > 1 {
        let (w, h) = rgb.dimensions();
        rgb = image::imageops::resize(&rgb, w * opts.upscale, h * opts.upscale, image::imageops::FilterType::Lanczos3);
    }
    // Label first, watermark last: drawing over a marked image would erase the mark under the label.
    if let Some(text) = &opts.visible_label {
        use sd_provenance::visible_label::{draw_label, Corner, DEFAULT_TEXT};
        let text = if text.is_empty() { DEFAULT_TEXT } else { text.as_str() };
        draw_label(&mut rgb, text, Corner::BottomRight)?;
    }
    let outcome = if opts.watermark {
        watermark::embed_with(&mut rgb, payload, opts.method())?
    } else {
        WatermarkOutcome::Disabled
    };
    let mut info = info(&outcome);
    if opts.upscale > 1 {
        // A1111's Extras tab records a post-processing upscale with these two keys.
        info.extra.push(("Postprocess upscale by".into(), opts.upscale.to_string()));
        info.extra.push(("Postprocess upscaler".into(), "Lanczos".into()));
    }
    let chunks = label_chunks(&info);
    let infotext = chunks.iter().find(|c| c.keyword == "parameters").map(|c| c.text.clone()).unwrap_or_default();
    let mut bytes = formats::encode(&rgb, opts.format, opts.quality, opts.lossless, &chunks)?;
    if let Some(id) = &opts.c2pa {
        let claim = ClaimInfo {
            generator_name: "sd-rs",
            generator_version: env!("CARGO_PKG_VERSION"),
            model: Some(model.name),
            model_hash: model.hash,
            parameters: &infotext,
            parent: opts.init_file.as_ref().map(|b| b.as_slice()),
        };
        bytes = credentials::sign(&bytes, opts.format, &claim, id)?;
    }
    Ok((bytes, infotext, outcome))
}

/// Write finished images to files named from `opts.pattern` (blocked ones, without bytes, are listed but not
/// written); `counter` numbers images across batches for `{n}`.
pub fn write_rendered(
    images: Vec<RenderedImage>,
    model_name: &str,
    opts: &OutputOptions,
    counter: &mut usize,
) -> Result<Vec<SavedImage>> {
    let mut saved = Vec::new();
    for image in images {
        let n = *counter;
        *counter += 1;
        let path = match &image.bytes {
            Some(bytes) => {
                let path = render_path(&opts.pattern, image.seed, n, model_name);
                let overwrite = if opts.overwrite { Overwrite::Allow } else { Overwrite::Refuse };
                write_atomic(&path, overwrite, bytes)?;
                Some(path)
            }
            None => None,
        };
        saved.push(SavedImage {
            path,
            seed: image.seed,
            index_in_batch: image.index_in_batch,
            watermark: image.watermark,
            safety_checked: image.safety_checked,
            flagged: image.flagged,
        });
    }
    Ok(saved)
}

/// `<model>/README.md <first 10 hex of its SHA-256>` when the model folder carries the training-data record
/// `sd train` writes (a card and `dataset_manifest.jsonl`): the images name what the model learnt from. It goes
/// into the A1111 parameters, so PNG, JPEG and WebP files and their C2PA `org.sd-rs.generation` assertion carry it.
pub fn model_card_ref(root: &Path, name: &str) -> Option<String> {
    let card = root.join("README.md");
    if !(card.is_file() && root.join("dataset_manifest.jsonl").is_file()) {
        return None;
    }
    let hash = sd_core::hash::sha256_file(&card).ok()?;
    Some(format!("{name}/README.md {}", &hash[..10]))
}

/// Save every image of `generated`; `counter` numbers images across batches for `{n}`.
pub fn save_outputs(
    sd: &StableDiffusion,
    req: &GenerationRequest,
    generated: &Generated,
    opts: &OutputOptions,
    counter: &mut usize,
) -> Result<Vec<SavedImage>> {
    write_rendered(render_outputs(sd, req, generated, &opts.render)?, &sd.name, opts, counter)
}

fn generation_info(
    sd: &StableDiffusion,
    req: &GenerationRequest,
    generated: &Generated,
    model_hash: Option<String>,
    index: usize,
    wm: &WatermarkOutcome,
) -> GenerationInfo {
    let mut info = GenerationInfo {
        prompt: req.prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        tool_name: "sd-rs".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    info.steps = req.steps as u32;
    info.sampler = generated.sampler_label.clone();
    info.schedule = generated.schedule_label.clone();
    info.cfg_scale = req.cfg_scale;
    info.seed = req.seed;
    info.width = req.width as u32;
    info.height = req.height as u32;
    info.model_name = Some(sd.name.clone());
    info.model_hash = model_hash;
    info.clip_skip = (req.clip_skip > 1).then_some(req.clip_skip as u32);
    info.denoising_strength = req.mode.strength().or(generated.hires.as_ref().map(|h| h.strength));
    info.mode = match req.mode {
        Mode::Txt2Img => sd_provenance::metadata::Mode::Txt2Img,
        Mode::Img2Img { .. } => sd_provenance::metadata::Mode::Img2Img,
        Mode::Inpaint { .. } => sd_provenance::metadata::Mode::Inpaint,
    };
    info.watermark = Some(wm.clone());
    if req.batch_size > 1 {
        info.extra.push(("Batch size".into(), req.batch_size.to_string()));
        info.extra.push(("Batch pos".into(), index.to_string()));
    }
    if req.guidance_rescale > 0.0 {
        info.extra.push(("Guidance rescale".into(), req.guidance_rescale.to_string()));
    }
    info.extra.extend(req.cache.infotext());
    for (i, c) in req.control.iter().enumerate() {
        info.extra.push(crate::control::infotext(i, c));
    }
    for (i, a) in req.ip_adapters.iter().enumerate() {
        info.extra.push(crate::ip_adapter::infotext(req.control.len() + i, a, sd.ip_adapter_module(&a.model)));
    }
    if let Some(h) = &generated.hires {
        info.extra.extend(h.params.iter().cloned());
    }
    if let Some(r) = &generated.refiner {
        info.extra.extend(r.params.iter().cloned());
    }
    info.extra.extend(prompt_params(sd, req, generated));
    info
}

/// A1111's prompt-related pairs: `TI hashes` and `Emphasis` (as `modules/sd_hijack_clip.py` writes them: the
/// emphasis mode only when it is not "Original" and a prompt contains `(` or `[`), and `Lora hashes`
/// (`extensions-builtin/Lora/extra_networks_lora.py`). Names lose `:` and `,`, as A1111 does; a file that
/// cannot be hashed is left out rather than failing a finished generation.
pub fn prompt_params(sd: &StableDiffusion, req: &GenerationRequest, generated: &Generated) -> Vec<(String, String)> {
    let clean = |n: &str| n.replace([':', ','], "");
    let mut out = Vec::new();
    let ti: Vec<String> = generated
        .embeddings_used
        .iter()
        .filter_map(|(name, path)| crate::loras::file_short_hash(path).ok().map(|h| format!("{}: {h}", clean(name))))
        .collect();
    if !ti.is_empty() {
        out.push(("TI hashes".to_string(), ti.join(", ")));
    }
    let bracketed = [&req.prompt, &req.negative_prompt].iter().any(|p| p.contains('(') || p.contains('['));
    if req.emphasis != crate::prompt::Emphasis::Original && bracketed {
        out.push(("Emphasis".to_string(), a1111_emphasis_name(req.emphasis).to_string()));
    }
    out.extend(lora_hashes(&sd.loras));
    out
}

/// A1111's `Lora hashes` pair for the LoRAs merged into a model (`name: short hash`, names without `:` and `,`);
/// `None` when there are none (or none could be hashed).
pub fn lora_hashes(loras: &[crate::loras::MergedLora]) -> Option<(String, String)> {
    let lora: Vec<String> = loras
        .iter()
        .filter_map(|l| l.short_hash.as_ref().map(|h| format!("{}: {h}", l.name.replace([':', ','], ""))))
        .collect();
    (!lora.is_empty()).then(|| ("Lora hashes".to_string(), lora.join(", ")))
}

/// The names of A1111's `modules/sd_emphasis.py` options.
pub fn a1111_emphasis_name(e: crate::prompt::Emphasis) -> &'static str {
    use crate::prompt::Emphasis;
    match e {
        Emphasis::Original => "Original",
        Emphasis::NoNorm => "No norm",
        Emphasis::Ignore => "Ignore",
        Emphasis::None => "None",
    }
}

/// Expand `{date}`, `{time}`, `{seed}`, `{n}`, `{model}` in an output pattern.
pub fn render_path(pattern: &str, seed: u64, n: usize, model: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let model: String =
        model.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    PathBuf::from(
        pattern
            .replace("{date}", &format!("{y:04}{m:02}{d:02}"))
            .replace("{time}", &format!("{:02}{:02}{:02}", t / 3600, (t / 60) % 60, t % 60))
            .replace("{seed}", &seed.to_string())
            .replace("{n}", &format!("{n:03}"))
            .replace("{model}", &model),
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Peak GPU memory of this process on `device` in MB, for `--json` reports next to [`peak_rss_mb`]:
/// `allocated` is what tensors held at most (`torch.cuda.max_memory_allocated`), `reserved` what the caching
/// allocator took from the driver (`max_memory_reserved`, what `nvidia-smi` shows). `null` on the CPU.
pub fn peak_gpu_mb(device: tch::Device) -> serde_json::Value {
    match sd_core::accel::MemoryStats::of(device) {
        Some(s) => serde_json::json!({
            "allocated": s.allocated.1 as f64 / (1u64 << 20) as f64,
            "reserved": s.reserved.1 as f64 / (1u64 << 20) as f64,
        }),
        None => serde_json::Value::Null,
    }
}

/// Peak resident memory of this process in MB (VmHWM), for `--json` reports.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    #[test]
    fn pattern_expands() {
        let p = render_path("out/{seed}-{n}-{model}.png", 42, 3, "my model");
        assert_eq!(p, PathBuf::from("out/42-003-my_model.png"));
    }
}
