//! Output formats chosen by file extension — PNG, JPEG, WebP — each carrying the same labels: the A1111
//! parameters (PNG `parameters` chunk; JPEG and WebP: EXIF UserComment in the layout A1111's piexif call produces,
//! so A1111's PNG Info and piexif-based tools read it), the XMP packet, and for PNG the `AIGC` chunk (in JPEG and
//! WebP the same label travels inside the XMP packet as `TC260:AIGC`).
//!
//! WebP is lossy by default (libwebp through the `webp` crate, at `quality` as A1111 writes it), or lossless when
//! asked (the `image` crate's encoder). Both become the extended format so that EXIF and XMP chunks can follow.

use crate::metadata::{encode_png, xmp, TextChunk};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

/// JPEG and lossy WebP quality when `--quality` is not given: at 90 the dwtDctSvd mark reads back whole from
/// both (README robustness table).
pub const DEFAULT_JPEG_QUALITY: u8 = 90;

/// libwebp's largest width or height; checked before the encoder is asked, so the error names it.
pub const MAX_WEBP_DIMENSION: u32 = 16383;

impl OutputFormat {
    /// The format a file name asks for; any extension other than png, jpg, jpeg, webp (any case) is an error.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            Some("webp") => Ok(Self::Webp),
            Some(other) => {
                bail!("{}: unsupported image format .{other}: expected .png, .jpg, .jpeg or .webp", path.display())
            }
            None => bail!("{}: no file extension: expected .png, .jpg, .jpeg or .webp", path.display()),
        }
    }

    /// Whether storing loses pixels (and so the watermark should be the robust one); `lossless` is WebP's choice.
    pub fn is_lossy(self, lossless: bool) -> bool {
        match self {
            Self::Png => false,
            Self::Jpeg => true,
            Self::Webp => !lossless,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

fn text_of<'a>(chunks: &'a [TextChunk], keyword: &str) -> Option<&'a str> {
    chunks.iter().find(|c| c.keyword == keyword).map(|c| c.text.as_str())
}

/// Encodes `img` as `format` with the label chunks [`crate::metadata::label_chunks`] made. `quality` (1–100) is
/// used by JPEG and lossy WebP; `lossless` by WebP only.
pub fn encode(
    img: &RgbImage,
    format: OutputFormat,
    quality: u8,
    lossless: bool,
    chunks: &[TextChunk],
) -> Result<Vec<u8>> {
    if format.is_lossy(lossless) && !(1..=100).contains(&quality) {
        bail!(
            "{} quality {quality} is out of range: expected 1 to 100",
            if format == OutputFormat::Jpeg { "JPEG" } else { "WebP" }
        );
    }
    match format {
        OutputFormat::Png => encode_png(img, chunks),
        OutputFormat::Jpeg => {
            let mut body = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut body, quality)
                .encode_image(img)
                .context("cannot encode JPEG")?;
            let mut segments = Vec::new();
            if let Some(p) = text_of(chunks, "parameters") {
                segments.push(app1(b"Exif\0\0", &exif_user_comment(p))?);
            }
            if let Some(x) = text_of(chunks, xmp::KEYWORD) {
                segments.push(app1(b"http://ns.adobe.com/xap/1.0/\0", x.as_bytes())?);
            }
            Ok(splice_after_soi(&body, &segments))
        }
        OutputFormat::Webp => {
            let (w, h) = img.dimensions();
            if w == 0 || h == 0 || w > MAX_WEBP_DIMENSION || h > MAX_WEBP_DIMENSION {
                bail!("cannot encode a {w}×{h} image as WebP: each side must be 1 to {MAX_WEBP_DIMENSION} pixels");
            }
            let body = if lossless {
                let mut body = Vec::new();
                image::codecs::webp::WebPEncoder::new_lossless(&mut body)
                    .encode(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                    .context("cannot encode lossless WebP")?;
                body
            } else {
                webp::Encoder::from_rgb(img.as_raw(), w, h)
                    .encode_simple(false, f32::from(quality))
                    .map_err(|e| anyhow::anyhow!("cannot encode WebP at quality {quality}: libwebp says {e:?}"))?
                    .to_vec()
            };
            let exif = text_of(chunks, "parameters").map(exif_user_comment);
            let xmp_packet = text_of(chunks, xmp::KEYWORD).map(|x| x.as_bytes().to_vec());
            webp_extended(&body, img.width(), img.height(), exif.as_deref(), xmp_packet.as_deref())
        }
    }
}

/// A TIFF/EXIF block holding only IFD0 → Exif IFD → UserComment, big-endian, with the 8-byte `UNICODE\0` code and
/// UTF-16BE text: byte for byte what `piexif.dump({"Exif": {UserComment: UserComment.dump(text, "unicode")}})`
/// returns after its `Exif\0\0` header (A1111 stores exactly that). Like piexif, the Exif IFD has no next-IFD
/// field: its value follows the entry directly.
pub fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    comment.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut t = Vec::with_capacity(40 + comment.len());
    t.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    // IFD0 at 8: one entry (ExifIFD pointer, LONG), next-IFD 0
    let exif_ifd: u32 = 8 + 2 + 12 + 4;
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x8769u16.to_be_bytes());
    t.extend_from_slice(&4u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&exif_ifd.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    // Exif IFD: one entry (UserComment, UNDEFINED) pointing just past itself
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x9286u16.to_be_bytes());
    t.extend_from_slice(&7u16.to_be_bytes());
    t.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    t.extend_from_slice(&(exif_ifd + 2 + 12).to_be_bytes());
    t.extend_from_slice(&comment);
    t
}

/// One APP1 segment; a JPEG segment holds at most 65 533 bytes of payload.
fn app1(header: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    let len = 2 + header.len() + payload.len();
    if len > 0xffff {
        bail!("metadata too large for one JPEG APP1 segment ({} bytes, at most 65533): shorten the prompt", len - 2);
    }
    let mut s = vec![0xff, 0xe1];
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(header);
    s.extend_from_slice(payload);
    Ok(s)
}

/// Puts `segments` right after SOI and the encoder's JFIF APP0 when there is one (JFIF wants APP0 first).
fn splice_after_soi(jpeg: &[u8], segments: &[Vec<u8>]) -> Vec<u8> {
    let mut at = 2;
    if jpeg.len() > 6 && jpeg[2] == 0xff && jpeg[3] == 0xe0 {
        at = 4 + u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize;
    }
    let mut out = Vec::with_capacity(jpeg.len() + segments.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&jpeg[..at]);
    for s in segments {
        out.extend_from_slice(s);
    }
    out.extend_from_slice(&jpeg[at..]);
    out
}

fn riff_chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

/// Top-level chunks of a WebP file (fourcc, data), without the RIFF header.
pub fn webp_chunks(bytes: &[u8]) -> Result<Vec<([u8; 4], &[u8])>> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        bail!("not a WebP file (bad RIFF/WEBP signature)");
    }
    let mut out = Vec::new();
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let fourcc = [bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]];
        let len = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        let end = (pos + 8).checked_add(len).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            bail!(
                "truncated WebP: chunk {} at byte {pos} runs past the end of the file",
                String::from_utf8_lossy(&fourcc)
            );
        };
        out.push((fourcc, &bytes[pos + 8..end]));
        pos = end + (len & 1);
    }
    Ok(out)
}

pub fn is_webp(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP"
}

/// Rewraps a simple WebP (one VP8/VP8L chunk) as the extended format with EXIF and XMP chunks (VP8X flags).
fn webp_extended(simple: &[u8], w: u32, h: u32, exif: Option<&[u8]>, xmp_packet: Option<&[u8]>) -> Result<Vec<u8>> {
    let chunks = webp_chunks(simple)?;
    let mut vp8x = [0u8; 10];
    vp8x[0] = if exif.is_some() { 0x08 } else { 0 } | if xmp_packet.is_some() { 0x04 } else { 0 };
    vp8x[4..7].copy_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    riff_chunk(&mut body, b"VP8X", &vp8x);
    for (fourcc, data) in chunks.iter().filter(|(f, _)| f != b"VP8X") {
        riff_chunk(&mut body, fourcc, data);
    }
    if let Some(e) = exif {
        riff_chunk(&mut body, b"EXIF", e);
    }
    if let Some(x) = xmp_packet {
        riff_chunk(&mut body, b"XMP ", x);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}
