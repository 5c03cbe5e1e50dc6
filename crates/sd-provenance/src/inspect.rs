//! `sd inspect`: everything an image says about how it was made — A1111 / ComfyUI parameters, the XMP digital
//! source type, the GB 45438 `AIGC` label, its C2PA Content Credentials validated by the `c2pa` crate (signature,
//! hashes, trust against given anchors; see [`crate::credentials`]), and the invisible-watermark verdict for each
//! known payload and method.

use crate::credentials::{self, C2paReport};
use crate::formats;
use crate::jpeg_meta;
use crate::metadata::{infotext, xmp, AigcLabel, Infotext};
use crate::png_chunks::{self, PngText};
use crate::watermark::{self, Detection, Method, Payload};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;

/// Images larger than this are refused before any pixel is decoded.
pub const MAX_PIXELS: u64 = 32 * 1024 * 1024;
pub const MAX_SIDE: u32 = 65_535;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub path: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// A1111-style parameters (PNG `parameters` chunk or JPEG EXIF UserComment), parsed.
    pub parameters: Option<Infotext>,
    pub parameters_raw: Option<String>,
    /// ComfyUI stores its graph as JSON in PNG chunks `prompt` (API form) and `workflow` (UI form).
    pub comfyui_prompt: Option<String>,
    pub comfyui_workflow: Option<String>,
    /// Other text chunks / comments, keyword → text.
    pub other_text: Vec<PngText>,
    pub xmp_present: bool,
    pub digital_source_type: Option<String>,
    pub creator_tool: Option<String>,
    pub watermark_record: Option<String>,
    pub aigc: Option<AigcLabel>,
    /// Where the AIGC label was found ("PNG chunk AIGC", "XMP TC260:AIGC").
    pub aigc_source: Option<String>,
    /// A C2PA manifest store chunk/segment exists.
    pub c2pa_manifest_present: bool,
    /// The manifest store validated: state, failures (tampering shows here), actions, signer, ingredients.
    pub c2pa: Option<C2paReport>,
    /// One verdict per payload and method (dwtDct, dwtDctSvd). None when the image is under 256×256 pixels.
    pub watermark: Option<Vec<Detection>>,
    pub watermark_note: Option<String>,
}

fn check_size(w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("image has zero size ({w}x{h})");
    }
    if w > MAX_SIDE || h > MAX_SIDE || (w as u64) * (h as u64) > MAX_PIXELS {
        bail!("image is {w}x{h}, larger than inspect accepts ({MAX_SIDE} per side, {MAX_PIXELS} pixels)");
    }
    Ok(())
}

fn apply_xmp(r: &mut Report, packet: &str) {
    r.xmp_present = true;
    r.digital_source_type = xmp::property(packet, "DigitalSourceType");
    r.creator_tool = xmp::property(packet, "CreatorTool");
    r.watermark_record = r.watermark_record.take().or_else(|| xmp::property(packet, "Watermark"));
    if r.aigc.is_none() {
        if let Some(label) = xmp::property(packet, "AIGC").and_then(|t| AigcLabel::parse(&t)) {
            r.aigc = Some(label);
            r.aigc_source = Some("XMP TC260:AIGC".into());
        }
    }
}

fn set_parameters(r: &mut Report, raw: String) {
    let parsed = infotext::parse(&raw);
    if r.watermark_record.is_none() {
        r.watermark_record = parsed.get("Watermark").map(str::to_string);
    }
    r.parameters = Some(parsed);
    r.parameters_raw = Some(raw);
}

fn read_png_meta(bytes: &[u8], r: &mut Report) -> Result<()> {
    let chunks = png_chunks::read_chunks(bytes)?;
    let (w, h) = png_chunks::dimensions(&chunks)?;
    r.format = "png".into();
    (r.width, r.height) = (w, h);
    let mut packet = None;
    for c in &chunks {
        if &c.kind == b"caBX" {
            r.c2pa_manifest_present = true;
        }
        let Some(t) = png_chunks::decode_text(c)? else {
            continue;
        };
        match t.keyword.as_str() {
            "parameters" => set_parameters(r, t.text),
            "prompt" => r.comfyui_prompt = Some(t.text),
            "workflow" => r.comfyui_workflow = Some(t.text),
            xmp::KEYWORD => packet = Some(t.text),
            "AIGC" => match AigcLabel::parse(&t.text) {
                Some(label) => {
                    r.aigc = Some(label);
                    r.aigc_source = Some("PNG chunk AIGC".into());
                }
                None => r.other_text.push(t),
            },
            _ => r.other_text.push(t),
        }
    }
    if let Some(p) = packet {
        apply_xmp(r, &p);
    }
    Ok(())
}

fn read_jpeg_meta(bytes: &[u8], r: &mut Report) -> Result<()> {
    let m = jpeg_meta::read(bytes)?;
    r.format = "jpeg".into();
    (r.width, r.height) = (m.width, m.height);
    r.c2pa_manifest_present = m.has_app11_jumbf;
    if let Some(uc) = m.user_comment {
        set_parameters(r, uc);
    }
    for (k, v) in [("ImageDescription", m.image_description), ("Software", m.software)] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            r.other_text.push(PngText { keyword: k.into(), text: v, chunk: "EXIF".into() });
        }
    }
    for c in m.comments {
        r.other_text.push(PngText { keyword: "comment".into(), text: c, chunk: "COM".into() });
    }
    if let Some(p) = m.xmp {
        apply_xmp(r, &p);
    }
    Ok(())
}

fn read_webp_meta(bytes: &[u8], r: &mut Report) -> Result<()> {
    r.format = "webp".into();
    let mut m = jpeg_meta::JpegMeta::default();
    let mut packet = None;
    for (fourcc, data) in formats::webp_chunks(bytes)? {
        match &fourcc {
            b"EXIF" => {
                // the chunk holds the TIFF block; some writers keep JPEG's "Exif\0\0" prefix
                jpeg_meta::read_exif(data.strip_prefix(b"Exif\0\0").unwrap_or(data), &mut m)
            }
            b"XMP " => packet = Some(String::from_utf8_lossy(data).into_owned()),
            b"C2PA" => r.c2pa_manifest_present = true,
            _ => {}
        }
    }
    let dims = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::WebP)
        .into_dimensions()
        .context("cannot read the WebP frame size")?;
    (r.width, r.height) = dims;
    if let Some(uc) = m.user_comment {
        set_parameters(r, uc);
    }
    if let Some(p) = packet {
        apply_xmp(r, &p);
    }
    Ok(())
}

/// Inspects image bytes (`name` is only used in messages and the report); C2PA trust without anchors.
pub fn inspect_bytes(name: &str, bytes: &[u8]) -> Result<Report> {
    inspect_bytes_with(name, bytes, None)
}

/// [`inspect_bytes`] with C2PA trust anchors (PEM) to validate signers against.
pub fn inspect_bytes_with(name: &str, bytes: &[u8], anchors_pem: Option<&str>) -> Result<Report> {
    let mut r = Report { path: name.to_string(), ..Default::default() };
    if png_chunks::is_png(bytes) {
        read_png_meta(bytes, &mut r).with_context(|| format!("{name}: cannot read PNG"))?;
    } else if jpeg_meta::is_jpeg(bytes) {
        read_jpeg_meta(bytes, &mut r).with_context(|| format!("{name}: cannot read JPEG"))?;
    } else if formats::is_webp(bytes) {
        read_webp_meta(bytes, &mut r).with_context(|| format!("{name}: cannot read WebP"))?;
    } else {
        bail!("{name}: not a PNG, JPEG or WebP image");
    }
    check_size(r.width, r.height).with_context(|| format!("{name}: refusing to decode"))?;
    if r.c2pa_manifest_present {
        r.c2pa = credentials::inspect(bytes, anchors_pem)?;
    }
    let img = image::load_from_memory(bytes).with_context(|| format!("{name}: cannot decode the pixels"))?.to_rgb8();
    let payloads = [Payload::SdV1, Payload::Sdxl];
    let found: Option<Vec<Detection>> = Method::ALL
        .iter()
        .flat_map(|&m| payloads.iter().map(move |p| (m, p)))
        .map(|(m, p)| watermark::detect_with(&img, p, m))
        .collect();
    if found.is_none() {
        r.watermark_note =
            Some(format!("image is {}x{}, under 256x256 pixels: no watermark can be read", r.width, r.height));
    } else if r.format == "jpeg" {
        r.watermark_note = Some(
            "JPEG compression usually erases the dwtDct mark (dwtDctSvd survives it); a miss proves nothing".into(),
        );
    }
    r.watermark = found;
    Ok(r)
}

pub fn inspect_file(path: &Path, anchors_pem: Option<&str>) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    inspect_bytes_with(&path.display().to_string(), &bytes, anchors_pem)
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}… ({} characters)", s.chars().take(max).collect::<String>(), s.chars().count())
    }
}

/// Human-readable report.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!("{} ({}, {}x{})", r.path, r.format.to_uppercase(), r.width, r.height));
    match &r.parameters {
        Some(p) => {
            line("  generation parameters (A1111 format):".into());
            line(format!("    prompt: {}", p.prompt));
            line(format!("    negative prompt: {}", p.negative_prompt));
            for (k, v) in &p.params {
                line(format!("    {k}: {v}"));
            }
        }
        None => line("  generation parameters: none found".into()),
    }
    if let Some(p) = &r.comfyui_prompt {
        line(format!("  ComfyUI prompt graph: {}", short(p, 200)));
    }
    if let Some(w) = &r.comfyui_workflow {
        line(format!("  ComfyUI workflow: {}", short(w, 200)));
    }
    for t in &r.other_text {
        line(format!("  {} {}: {}", t.chunk, t.keyword, short(&t.text, 200)));
    }
    line("  labels:".into());
    line(format!("    XMP: {}", if r.xmp_present { "present" } else { "absent" }));
    line(format!("    digital source type: {}", r.digital_source_type.as_deref().unwrap_or("none")));
    if let Some(t) = &r.creator_tool {
        line(format!("    creator tool: {t}"));
    }
    match &r.aigc {
        Some(a) => line(format!("    AIGC label ({}): {}", r.aigc_source.as_deref().unwrap_or("?"), a.to_json())),
        None => line("    AIGC label: none".into()),
    }
    match &r.c2pa {
        None if r.c2pa_manifest_present => line("    C2PA Content Credentials: present, unreadable".into()),
        None => line("    C2PA Content Credentials: absent".into()),
        Some(c) => {
            let verdict = match c.state.as_str() {
                "Trusted" => "signature and hashes valid, signer trusted",
                "Valid" => "signature and hashes valid, signer not in the trust anchors",
                _ => "INVALID (the file was changed after signing, or the manifest is broken)",
            };
            line(format!("    C2PA Content Credentials: {} — {verdict}", c.state));
            for f in &c.failures {
                line(format!("      failure: {f}"));
            }
            if let Some(s) = &c.signer {
                line(format!(
                    "      signed by: {s}{}{}",
                    c.issuer.as_deref().map(|i| format!(" (issuer {i})")).unwrap_or_default(),
                    c.signed_at.as_deref().map(|t| format!(" at {t}")).unwrap_or_default()
                ));
            }
            if let Some(g) = &c.claim_generator {
                line(format!("      generator: {g}"));
            }
            if !c.actions.is_empty() {
                line(format!("      actions: {}", c.actions.join(", ")));
            }
            for t in &c.digital_source_types {
                line(format!("      digital source type: {t}"));
            }
            for i in &c.ingredients {
                line(format!("      ingredient: {i}"));
            }
            for (k, v) in &c.training_mining {
                line(format!("      training/mining: {k} = {v}"));
            }
        }
    }
    if let Some(w) = &r.watermark_record {
        line(format!("    watermark recorded in metadata: {w}"));
    }
    line("  invisible watermark:".into());
    if let Some(ds) = &r.watermark {
        for d in ds {
            line(format!(
                "    {} {}: {}/{} bits match — {}",
                d.method,
                d.payload,
                d.matched_bits,
                d.total_bits,
                d.confidence.word()
            ));
        }
    }
    if let Some(n) = &r.watermark_note {
        line(format!("    note: {n}"));
    }
    o
}
