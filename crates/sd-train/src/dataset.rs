//! Training data: images with captions, from a folder of `name.png` + `name.txt` pairs, or an HF `imagefolder`
//! (`metadata.jsonl` lines with `file_name` and `text`), optionally resized to a square resolution the way
//! diffusers' `train_text_to_image.py` does (shorter side to R, then a centre or random R×R crop).
//!
//! Before any image is decoded it is screened for its rights holder's reservations against AI training
//! ([`crate::optout`]); reserved images are left out, and [`Dataset::record`] keeps every image's verdict for the
//! manifest and model card ([`crate::record`]).
//!
//! Every problem is reported with the file it concerns: an empty folder, an image without a caption, a caption
//! without an image, an unreadable image, images of different sizes when no `--resolution` is given.

use crate::optout::{self, OptOutPolicy, TdmRepFile, Verdict};
use crate::record::{DataRecord, ManifestEntry};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use sd_core::image_io::{self, Filter, Range};
use sd_core::TorchGenerator;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// Where crops are taken when images are resized to `--resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    Center,
    Random,
}

impl std::str::FromStr for Crop {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "center" | "centre" => Ok(Self::Center),
            "random" => Ok(Self::Random),
            other => bail!("unknown crop `{other}`: expected center or random"),
        }
    }
}

/// One image and its caption, resized (not yet cropped).
pub struct Example {
    /// Where it came from (a file, or a generated name), for messages.
    pub source: String,
    pub caption: String,
    pub image: RgbImage,
}

/// Examples that all yield `width`×`height` training images.
pub struct Dataset {
    pub examples: Vec<Example>,
    pub width: u32,
    pub height: u32,
    resolution: Option<u32>,
    crop: Crop,
    /// Every image of the source with its opt-out verdict (what the manifest and model card say).
    pub record: DataRecord,
}

/// One image named by the dataset folder, before it is read.
struct Listed {
    path: PathBuf,
    caption: String,
    source: Option<String>,
    license: Option<String>,
}

impl Dataset {
    /// Read a dataset folder, honouring opt-outs; `resolution` resizes every image (shorter side) and crops it
    /// square.
    pub fn open(dir: &Path, resolution: Option<u32>, crop: Crop) -> Result<Self> {
        Self::open_with_policy(dir, resolution, crop, &OptOutPolicy::default())
    }

    /// [`open`](Self::open) with a deny list, or with `--ignore-opt-outs`.
    pub fn open_with_policy(dir: &Path, resolution: Option<u32>, crop: Crop, policy: &OptOutPolicy) -> Result<Self> {
        if !dir.is_dir() {
            bail!("dataset {} is not a folder", dir.display());
        }
        let listed = if dir.join("metadata.jsonl").is_file() { read_metadata(dir)? } else { read_caption_files(dir)? };
        if listed.is_empty() {
            bail!(
                "dataset {} holds no images: expected image files (png, jpg, webp) each with a .txt caption of the same name, or a metadata.jsonl",
                dir.display()
            );
        }
        let tdmrep = TdmRepFile::find(dir)?;
        let mut record = DataRecord {
            dataset: dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string()),
            screened: true,
            ignored_opt_outs: policy.ignore,
            tdmrep_file: tdmrep.as_ref().map(|t| relative(dir, &t.path)),
            deny_list: (!policy.deny.origin.is_empty()).then(|| policy.deny.origin.clone()),
            ..Default::default()
        };
        let mut examples = Vec::with_capacity(listed.len());
        for item in listed {
            let bytes = std::fs::read(&item.path).with_context(|| format!("cannot read {}", item.path.display()))?;
            let sha256 = sd_core::hash::hex(&Sha256::digest(&bytes));
            let rel = relative(dir, &item.path);
            let reasons = optout::reasons(&bytes, &rel, &sha256, item.source.as_deref(), &policy.deny, tdmrep.as_ref())
                .with_context(|| format!("{}: cannot read its metadata for opt-out signals", item.path.display()))?;
            let verdict = match (reasons.is_empty(), policy.ignore) {
                (true, _) => Verdict::Used,
                (false, false) => Verdict::Excluded,
                (false, true) => Verdict::UsedDespiteOptOut,
            };
            if verdict != Verdict::Excluded {
                let image =
                    image_io::decode_rgb(&bytes).with_context(|| format!("cannot decode {}", item.path.display()))?;
                examples.push(Example {
                    source: item.path.display().to_string(),
                    caption: item.caption.clone(),
                    image,
                });
            }
            record.entries.push(ManifestEntry {
                file: rel,
                sha256: Some(sha256),
                caption: item.caption,
                source: item.source,
                license: item.license,
                verdict,
                reasons,
            });
        }
        if examples.is_empty() {
            bail!(
                "every image of dataset {} is reserved against AI training, nothing is left to train on:\n{}",
                dir.display(),
                record.exclusion_report().trim_end()
            );
        }
        let mut ds = Self::from_examples(examples, resolution, crop)?;
        ds.record = record;
        Ok(ds)
    }

    /// Build from images already in memory (procedural datasets, tests).
    pub fn from_examples(mut examples: Vec<Example>, resolution: Option<u32>, crop: Crop) -> Result<Self> {
        let Some(first) = examples.first() else { bail!("the dataset is empty") };
        let (width, height) = match resolution {
            Some(r) => {
                if r == 0 {
                    bail!("--resolution must be positive");
                }
                for ex in &mut examples {
                    ex.image = resize_shorter_side(&ex.image, r);
                }
                (r, r)
            }
            None => {
                let (w, h) = first.image.dimensions();
                if let Some(other) = examples.iter().find(|e| e.image.dimensions() != (w, h)) {
                    bail!(
                        "images have different sizes: {} is {w}×{h} but {} is {}×{}; pass --resolution R (with --crop center|random) to resize them all",
                        first.source,
                        other.source,
                        other.image.width(),
                        other.image.height()
                    );
                }
                (w, h)
            }
        };
        let record = DataRecord {
            dataset: "in-memory examples".into(),
            synthetic: true,
            entries: examples
                .iter()
                .map(|e| ManifestEntry {
                    file: e.source.clone(),
                    sha256: None,
                    caption: e.caption.clone(),
                    source: None,
                    license: None,
                    verdict: Verdict::Used,
                    reasons: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
        Ok(Self { examples, width, height, resolution, crop, record })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whether [`pixels`](Self::pixels) draws randomness (a random crop of an image larger than the target).
    pub fn is_random(&self) -> bool {
        self.resolution.is_some() && self.crop == Crop::Random
    }

    /// Example `idx` as a `[3, height, width]` float tensor in [-1, 1]; random crops draw from `gen`.
    pub fn pixels(&self, idx: usize, gen: &mut TorchGenerator, device: Device) -> Result<Tensor> {
        let ex = self.examples.get(idx).with_context(|| format!("dataset index {idx} out of range"))?;
        let (w, h) = ex.image.dimensions();
        let (tw, th) = (self.width, self.height);
        let (x, y) = match (self.resolution, self.crop) {
            (None, _) => (0, 0),
            (Some(_), Crop::Center) => ((w - tw) / 2, (h - th) / 2),
            // torchvision RandomCrop: top ~ randint(0, h - th + 1), then left ~ randint(0, w - tw + 1).
            (Some(_), Crop::Random) => {
                let top = gen.next_u32() % (h - th + 1);
                let left = gen.next_u32() % (w - tw + 1);
                (left, top)
            }
        };
        let cropped = image::imageops::crop_imm(&ex.image, x, y, tw, th).to_image();
        Ok(image_io::rgb_to_tensor(&cropped, Range::Signed, Kind::Float, device).f_squeeze_dim(0)?)
    }

    /// The visiting order of epoch `epoch`: a Fisher–Yates shuffle driven by `gen`.
    pub fn epoch_order(&self, gen: &mut TorchGenerator) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (gen.next_u32() as usize) % (i + 1);
            order.swap(i, j);
        }
        order
    }
}

/// torchvision `Resize(r)`: the shorter side becomes `r`, the longer one `int(r * long / short)`, bilinear.
fn resize_shorter_side(img: &RgbImage, r: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (r, ((r as u64 * h as u64) / w.max(1) as u64) as u32)
    } else {
        (((r as u64 * w as u64) / h.max(1) as u64) as u32, r)
    };
    image_io::resize(img, nw.max(r), nh.max(r), Filter::Bilinear)
}

/// `path` inside `dir`, `/`-separated (what the manifest and TDMRep locations use).
fn relative(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `name.png` + `name.txt` pairs, sorted by file name so the dataset order never depends on the file system.
fn read_caption_files(dir: &Path) -> Result<Vec<Listed>> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list dataset {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    images.sort();
    let mut pairs = Vec::with_capacity(images.len());
    for img in images {
        let txt = img.with_extension("txt");
        if !txt.is_file() {
            bail!(
                "image {} has no caption: expected {} (or a metadata.jsonl in the folder)",
                img.display(),
                txt.display()
            );
        }
        let caption =
            std::fs::read_to_string(&txt).with_context(|| format!("cannot read caption {}", txt.display()))?;
        pairs.push(Listed { path: img, caption: caption.trim().to_string(), source: None, license: None });
    }
    Ok(pairs)
}

/// HF `imagefolder` metadata: one JSON object per line with `file_name` and `text` (or `caption`), and optionally
/// `source` (where the image came from, a URL) and `license` (or `licence`).
fn read_metadata(dir: &Path) -> Result<Vec<Listed>> {
    let path = dir.join("metadata.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {} is not valid JSON", path.display(), i + 1))?;
        let file = v
            .get("file_name")
            .and_then(|f| f.as_str())
            .with_context(|| format!("{} line {} has no `file_name` string", path.display(), i + 1))?;
        let caption = v.get("text").or_else(|| v.get("caption")).and_then(|t| t.as_str()).with_context(|| {
            format!("{} line {}: image {file} has no caption (`text` field)", path.display(), i + 1)
        })?;
        let img = dir.join(file);
        if !img.is_file() {
            bail!("{} line {} names {}, which does not exist", path.display(), i + 1, img.display());
        }
        let field = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
        pairs.push(Listed {
            path: img,
            caption: caption.to_string(),
            source: field("source"),
            license: field("license").or_else(|| field("licence")),
        });
    }
    Ok(pairs)
}
