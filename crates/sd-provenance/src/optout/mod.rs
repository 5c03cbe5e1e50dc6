//! Machine-readable reservations against AI training that an image carries itself, read before `sd train` uses
//! it (the policy that turns them into include/exclude decisions is `sd_train::optout`):
//!
//! - IPTC/PLUS `plus:DataMining` in XMP (any `DMI-PROHIBITED…` value of the PLUS vocabulary);
//! - W3C TDMRep `tdm:reservation` / `tdm:policy` in XMP;
//! - the `noai` / `noimageai` markers image hosts write, in XMP values, PNG text chunks and EXIF
//!   `ImageDescription` / `UserComment`;
//! - C2PA `c2pa.training-mining` (or `cawg.training-mining`) entries, read by the `c2pa` crate
//!   ([`crate::credentials::inspect`]).
//!
//! XMP is found where each container keeps it: PNG `iTXt` keyword `XML:com.adobe.xmp`, JPEG APP1
//! `http://ns.adobe.com/xap/1.0/`, WebP `XMP ` chunk. Every walk is bounded by [`ScanLimits`] (the caller passes
//! `sd_core::limits`; this crate stays free of LibTorch).

pub mod xmp;

use crate::{credentials, formats, jpeg_meta, png_chunks};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Bounds on what one image may make the scan do.
#[derive(Clone, Copy, Debug)]
pub struct ScanLimits {
    pub max_xmp_bytes: usize,
    pub max_xml_depth: usize,
    /// PNG/WebP chunks or JPEG marker segments.
    pub max_chunks: usize,
}

/// The PLUS vocabulary's prefix for `plus:DataMining` values.
pub const PLUS_VOCAB: &str = "http://ns.useplus.org/ldf/vocab/";

/// One signal found in an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    /// `plus:DataMining`, `tdm:reservation`, `noai`, `c2pa.training-mining`.
    pub kind: String,
    /// Where in the file: `PNG iTXt XML:com.adobe.xmp`, `JPEG EXIF UserComment`, `WebP C2PA manifest`, ...
    pub location: String,
    /// The value as written (`http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED`, `1`, `c2pa.ai_training: notAllowed`).
    pub value: String,
}

/// Everything an image says about text-and-data mining and AI training.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageSignals {
    /// Reservations (each one alone excludes the image).
    pub reservations: Vec<Signal>,
    /// `tdm:reservation` from the image's XMP, when present: `Some(true)` = 1, `Some(false)` = 0 (not reserved; it
    /// overrides a site-wide `tdmrep.json` rule, as TDMRep lets a resource's own declaration supersede the file's).
    /// Values other than 0 and 1 are protocol errors that TDMRep reads as unset.
    pub tdm_reserved: Option<bool>,
    pub tdm_policy: Option<String>,
    /// Where the TDMRep value was read.
    pub tdm_location: Option<String>,
}

/// Whether a `plus:DataMining` value reserves AI training: every `DMI-PROHIBITED…` term of the PLUS vocabulary
/// does (`…-AIMLTRAINING`, `…-GENAIMLTRAINING`, `…-EXCEPTSEARCHENGINEINDEXING`, plain `DMI-PROHIBITED`, and the
/// `…-SEECONSTRAINT` / `…-SEE…RIGHTSEXPR` forms, whose exceptions live in a rights expression this tool cannot
/// evaluate). `DMI-UNSPECIFIED` and `DMI-ALLOWED` do not. The bare term without the vocabulary URI is accepted.
pub fn data_mining_prohibits_training(value: &str) -> bool {
    let v = value.trim();
    let term = v.strip_prefix(PLUS_VOCAB).unwrap_or(v);
    term.to_ascii_uppercase().starts_with("DMI-PROHIBITED")
}

/// Whether `text` carries the `noai` or `noimageai` directive as a word of its own (case-insensitive, as in a
/// robots meta tag `content="noai, noimageai"`), not as part of a longer word.
pub fn has_noai_marker(text: &str) -> Option<&'static str> {
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.eq_ignore_ascii_case("noai") {
            return Some("noai");
        }
        if word.eq_ignore_ascii_case("noimageai") {
            return Some("noimageai");
        }
    }
    None
}

/// Training-mining uses whose `notAllowed` (or `constrained`: conditions this tool cannot check) reserves
/// training: AI training, generative AI training, and data mining in general (training is text and data mining).
const C2PA_TRAINING_USES: [&str; 3] = ["ai_training", "ai_generative_training", "data_mining"];

struct Collector {
    out: ImageSignals,
    limits: ScanLimits,
}

impl Collector {
    fn text(&mut self, location: &str, text: &str) {
        if let Some(m) = has_noai_marker(text) {
            self.out.reservations.push(Signal { kind: "noai".into(), location: location.into(), value: m.into() });
        }
    }

    fn xmp(&mut self, location: &str, packet: &str) -> Result<()> {
        let facts = xmp::parse(packet, &self.limits).with_context(|| location.to_string())?;
        for v in &facts.data_mining {
            if data_mining_prohibits_training(v) {
                self.out.reservations.push(Signal {
                    kind: "plus:DataMining".into(),
                    location: location.into(),
                    value: v.clone(),
                });
            }
        }
        if let Some(r) = &facts.tdm_reservation {
            self.out.tdm_reserved = match r.trim() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
            self.out.tdm_policy = facts.tdm_policy.clone();
            self.out.tdm_location = Some(location.into());
        }
        if let Some(m) = facts.values.iter().find_map(|v| has_noai_marker(v)) {
            self.out.reservations.push(Signal { kind: "noai".into(), location: location.into(), value: m.into() });
        }
        Ok(())
    }

    fn exif(&mut self, container: &str, tiff: &[u8]) {
        let mut m = jpeg_meta::JpegMeta::default();
        jpeg_meta::read_exif(tiff, &mut m);
        if let Some(d) = &m.image_description {
            self.text(&format!("{container} EXIF ImageDescription"), d);
        }
        if let Some(c) = &m.user_comment {
            self.text(&format!("{container} EXIF UserComment"), c);
        }
    }

    fn c2pa(&mut self, container: &str, bytes: &[u8]) -> Result<()> {
        let Some(report) = credentials::inspect(bytes, None)? else { return Ok(()) };
        for (k, v) in &report.training_mining {
            let reserved_use = C2PA_TRAINING_USES.iter().any(|u| k.rsplit('.').next() == Some(u));
            if reserved_use && (v == "notAllowed" || v == "constrained") {
                self.out.reservations.push(Signal {
                    kind: "c2pa.training-mining".into(),
                    location: format!("{container} C2PA manifest ({} signature)", report.state),
                    value: format!("{k}: {v}"),
                });
            }
        }
        Ok(())
    }

    fn chunk_count(&self, n: usize, container: &str) -> Result<()> {
        if n > self.limits.max_chunks {
            bail!("{container} has more chunks than the image chunks limit of {} chunks", self.limits.max_chunks);
        }
        Ok(())
    }
}

/// Reads every opt-out signal of an encoded PNG, JPEG or WebP file. Malformed metadata is an error (naming what
/// was malformed), never a silent "no reservation".
pub fn scan(bytes: &[u8], limits: ScanLimits) -> Result<ImageSignals> {
    let mut c = Collector { out: ImageSignals::default(), limits };
    if png_chunks::is_png(bytes) {
        let chunks = png_chunks::read_chunks_bounded(bytes, limits.max_chunks)?;
        let mut manifest = false;
        for ch in &chunks {
            match &ch.kind {
                b"caBX" => manifest = true,
                b"eXIf" => c.exif("PNG", &ch.data),
                _ => {
                    if let Some(t) = png_chunks::decode_text(ch)? {
                        let location = format!("PNG {} {}", t.chunk, t.keyword);
                        if t.keyword == crate::metadata::xmp::KEYWORD {
                            c.xmp(&location, &t.text)?;
                        } else {
                            c.text(&location, &format!("{} {}", t.keyword, t.text));
                        }
                    }
                }
            }
        }
        if manifest {
            c.c2pa("PNG", bytes)?;
        }
    } else if jpeg_meta::is_jpeg(bytes) {
        let m = jpeg_meta::read_bounded(bytes, limits.max_chunks)?;
        if let Some(d) = &m.image_description {
            c.text("JPEG EXIF ImageDescription", d);
        }
        if let Some(u) = &m.user_comment {
            c.text("JPEG EXIF UserComment", u);
        }
        for com in &m.comments {
            c.text("JPEG COM", com);
        }
        if let Some(x) = &m.xmp {
            c.xmp("JPEG APP1 XMP", x)?;
        }
        if m.has_app11_jumbf {
            c.c2pa("JPEG", bytes)?;
        }
    } else if formats::is_webp(bytes) {
        let chunks = formats::webp_chunks(bytes)?;
        c.chunk_count(chunks.len(), "WebP")?;
        let mut manifest = false;
        for (fourcc, data) in &chunks {
            match fourcc {
                b"EXIF" => c.exif("WebP", data.strip_prefix(b"Exif\0\0").unwrap_or(data)),
                b"XMP " => c.xmp("WebP XMP chunk", &String::from_utf8_lossy(data))?,
                b"C2PA" => manifest = true,
                _ => {}
            }
        }
        if manifest {
            c.c2pa("WebP", bytes)?;
        }
    } else {
        bail!("not a PNG, JPEG or WebP image");
    }
    Ok(c.out)
}
