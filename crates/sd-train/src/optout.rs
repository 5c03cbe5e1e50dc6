//! Which training images their rights holders reserved against AI training, decided before any is used.
//!
//! An image is excluded when any of these says so (the readers are in `sd_provenance::optout`):
//! - its XMP `plus:DataMining` is a `DMI-PROHIBITED…` term of the PLUS vocabulary;
//! - W3C TDMRep: its XMP `tdm:reservation` is 1, or, when the image has no TDMRep value of its own, the first rule
//!   of the dataset's `tdmrep.json` whose `location` matches the image's path (`/` + its path inside the dataset
//!   folder) has `tdm-reservation` 1. The image's own value supersedes the file's rule, as TDMRep lets a
//!   resource-level declaration supersede the site-wide file;
//! - a `noai` / `noimageai` marker in its XMP, PNG text chunks or EXIF `ImageDescription` / `UserComment`;
//! - its C2PA manifest's training-mining assertion sets `ai_training`, `ai_generative_training` or `data_mining`
//!   to `notAllowed` (or `constrained`);
//! - the user's deny list (`--opt-out-list`): the file's SHA-256, or the `source` URL in `metadata.jsonl`.
//!
//! `--ignore-opt-outs` keeps reserved images in, and the manifest and model card say so.

use anyhow::{bail, Context, Result};
use sd_core::limits;
use sd_provenance::optout::{self as reader, ScanLimits};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The bounds of `sd_core::limits` as the reader takes them.
pub fn scan_limits() -> ScanLimits {
    ScanLimits {
        max_xmp_bytes: limits::XMP_MAX_BYTES as usize,
        max_xml_depth: limits::XMP_MAX_DEPTH as usize,
        max_chunks: limits::IMAGE_MAX_CHUNKS as usize,
    }
}

/// What each image is checked for, in words (for the model card and `--help`).
pub const CHECKS: &[&str] = &[
    "IPTC/PLUS plus:DataMining (DMI-PROHIBITED…) in XMP",
    "W3C TDMRep tdm:reservation in XMP, and the dataset's tdmrep.json",
    "noai / noimageai markers (XMP, PNG text, EXIF ImageDescription/UserComment)",
    "C2PA training-mining assertions (ai_training, ai_generative_training, data_mining)",
    "the user's deny list (--opt-out-list: SHA-256 of files, source URLs)",
];

/// Why an image is reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reason {
    /// `plus:DataMining`, `tdm:reservation`, `tdmrep.json`, `noai`, `c2pa.training-mining`, `opt-out list`.
    pub kind: String,
    /// Where it was found and what it said.
    pub detail: String,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.kind, self.detail)
    }
}

/// The user's deny list: SHA-256 digests of files and source URLs, one a line, `#` comments.
#[derive(Clone, Debug, Default)]
pub struct DenyList {
    sha256: HashSet<String>,
    urls: HashSet<String>,
    /// The file it came from, for reasons.
    pub origin: String,
}

impl DenyList {
    pub fn read(path: &Path) -> Result<Self> {
        let text = read_bounded(path, "opt-out list")?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut list = Self { origin: origin.to_string(), ..Default::default() };
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            if entry.len() == 64 && entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                list.sha256.insert(entry.to_ascii_lowercase());
            } else if entry.contains("://") {
                list.urls.insert(entry.to_string());
            } else {
                bail!("{origin} line {}: `{entry}` is neither a SHA-256 (64 hex digits) nor a URL (scheme://…)", i + 1);
            }
        }
        Ok(list)
    }

    fn check(&self, sha256: &str, source: Option<&str>) -> Option<Reason> {
        if self.sha256.contains(sha256) {
            return Some(Reason { kind: "opt-out list".into(), detail: format!("SHA-256 listed in {}", self.origin) });
        }
        let source = source?.trim();
        self.urls.contains(source).then(|| Reason {
            kind: "opt-out list".into(),
            detail: format!("source {source} listed in {}", self.origin),
        })
    }
}

fn read_bounded(path: &Path, what: &str) -> Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?.len();
    if len > limits::OPT_OUT_FILE_MAX_BYTES {
        bail!(
            "{what} {}: {}",
            path.display(),
            limits::exceeded(format!("{len} bytes"), "opt-out file", limits::OPT_OUT_FILE_MAX_BYTES, "bytes")
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// One rule of a `tdmrep.json`.
#[derive(Clone, Debug)]
pub struct TdmRule {
    pub location: String,
    /// `Some(true)` = 1, `Some(false)` = 0; other values are protocol errors, read as unset.
    pub reserved: Option<bool>,
    pub policy: Option<String>,
    matcher: regex::Regex,
}

/// A dataset's `tdmrep.json` (TDMRep's site-wide file: an array of `{location, tdm-reservation, tdm-policy}`).
#[derive(Clone, Debug)]
pub struct TdmRepFile {
    pub path: PathBuf,
    pub rules: Vec<TdmRule>,
}

/// A TDMRep `location` pattern as a regex: robots.txt path matching — a prefix match, `*` any run of characters,
/// a final `$` anchors the end; `%XX` escapes stand for the character (how a literal `*` or `$` is written).
fn location_regex(pattern: &str) -> Result<regex::Regex> {
    let (body, anchored) = match pattern.strip_suffix('$') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let mut re = String::from("^");
    let mut bytes = body.as_bytes().iter().copied();
    let mut literal = Vec::new();
    let flush = |lit: &mut Vec<u8>, re: &mut String| {
        re.push_str(&regex::escape(&String::from_utf8_lossy(lit)));
        lit.clear();
    };
    while let Some(b) = bytes.next() {
        match b {
            b'*' => {
                flush(&mut literal, &mut re);
                re.push_str(".*");
            }
            b'%' => {
                let hi = bytes.next();
                let lo = bytes.next();
                let hex = [hi.unwrap_or(b'x'), lo.unwrap_or(b'x')];
                match u8::from_str_radix(std::str::from_utf8(&hex).unwrap_or("xx"), 16) {
                    Ok(v) => literal.push(v),
                    Err(_) => bail!("tdmrep.json location `{pattern}`: `%` must be followed by two hex digits"),
                }
            }
            _ => literal.push(b),
        }
    }
    flush(&mut literal, &mut re);
    if anchored {
        re.push('$');
    }
    regex::Regex::new(&re).with_context(|| format!("tdmrep.json location `{pattern}` is not a usable pattern"))
}

impl TdmRepFile {
    /// `DIR/tdmrep.json`, or `DIR/.well-known/tdmrep.json` where the dataset is a copy of a site.
    pub fn find(dir: &Path) -> Result<Option<Self>> {
        for p in [dir.join("tdmrep.json"), dir.join(".well-known").join("tdmrep.json")] {
            if p.is_file() {
                let text = read_bounded(&p, "TDMRep file")?;
                return Self::parse(&text, &p).map(Some);
            }
        }
        Ok(None)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let name = path.display();
        let v: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("{name} is not valid JSON (TDMRep expects an array)"))?;
        let Some(items) = v.as_array() else {
            bail!("{name}: expected a JSON array of {{\"location\", \"tdm-reservation\", \"tdm-policy\"}} rules");
        };
        let mut rules = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let location = item.get("location").and_then(|l| l.as_str()).with_context(|| {
                format!("{name} rule {}: `location` (a path pattern such as \"/images/*\") is required", i + 1)
            })?;
            let reservation = item
                .get("tdm-reservation")
                .with_context(|| format!("{name} rule {}: `tdm-reservation` (0 or 1) is required", i + 1))?;
            // TDMRep: values other than 0 and 1 are protocol errors, which an agent reads as unset.
            let reserved = match reservation.as_i64().or_else(|| reservation.as_str()?.trim().parse().ok()) {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            };
            let policy = item.get("tdm-policy").and_then(|p| p.as_str()).map(str::to_string);
            rules.push(TdmRule {
                location: location.to_string(),
                reserved,
                policy,
                matcher: location_regex(location).with_context(|| format!("{name} rule {}", i + 1))?,
            });
        }
        Ok(Self { path: path.to_path_buf(), rules })
    }

    /// The rule that applies to `path` (`/`-separated, starting with `/`): the first that matches.
    pub fn lookup(&self, path: &str) -> Option<&TdmRule> {
        self.rules.iter().find(|r| r.matcher.is_match(path))
    }
}

/// How one dataset is screened.
#[derive(Clone, Debug, Default)]
pub struct OptOutPolicy {
    pub deny: DenyList,
    /// `--ignore-opt-outs`: keep reserved images (recorded in the manifest and the card).
    pub ignore: bool,
}

/// The verdict on one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Used,
    Excluded,
    /// Reserved, but `--ignore-opt-outs` kept it.
    UsedDespiteOptOut,
}

/// Every reservation of one image: `rel` is its path inside the dataset folder (`/`-separated).
pub fn reasons(
    bytes: &[u8],
    rel: &str,
    sha256: &str,
    source: Option<&str>,
    deny: &DenyList,
    tdmrep: Option<&TdmRepFile>,
) -> Result<Vec<Reason>> {
    let signals = reader::scan(bytes, scan_limits())?;
    let mut out: Vec<Reason> = signals
        .reservations
        .iter()
        .map(|s| Reason { kind: s.kind.clone(), detail: format!("{}: {}", s.location, s.value) })
        .collect();
    match signals.tdm_reserved {
        Some(true) => out.push(Reason {
            kind: "tdm:reservation".into(),
            detail: format!(
                "{}: 1{}",
                signals.tdm_location.as_deref().unwrap_or("XMP"),
                signals.tdm_policy.as_deref().map(|p| format!(", policy {p}")).unwrap_or_default()
            ),
        }),
        Some(false) => {}
        None => {
            let site_path = format!("/{rel}");
            if let Some((file, rule)) = tdmrep.and_then(|f| f.lookup(&site_path).map(|r| (f, r))) {
                if rule.reserved == Some(true) {
                    out.push(Reason {
                        kind: "tdmrep.json".into(),
                        detail: format!(
                            "{}: location \"{}\" has tdm-reservation 1{}",
                            file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                            rule.location,
                            rule.policy.as_deref().map(|p| format!(", policy {p}")).unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
    out.extend(deny.check(sha256, source));
    Ok(out)
}
