//! Training data: images with captions, from a folder of `name.png` + `name.txt` pairs, or an HF `imagefolder`
//! (`metadata.jsonl` lines with `file_name` and `text`), optionally resized to a square resolution the way
//! diffusers' `train_text_to_image.py` does (shorter side to R, then a centre or random R×R crop).
//!
//! Every problem is reported with the file it concerns: an empty folder, an image without a caption, a caption
//! without an image, an unreadable image, images of different sizes when no `--resolution` is given.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use sd_core::image_io::{self, Filter, Range};
use sd_core::TorchGenerator;
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
}

impl Dataset {
    /// Read a dataset folder; `resolution` resizes every image (shorter side) and crops it square.
    pub fn open(dir: &Path, resolution: Option<u32>, crop: Crop) -> Result<Self> {
        if !dir.is_dir() {
            bail!("dataset {} is not a folder", dir.display());
        }
        let pairs = if dir.join("metadata.jsonl").is_file() { read_metadata(dir)? } else { read_caption_files(dir)? };
        if pairs.is_empty() {
            bail!(
                "dataset {} holds no images: expected image files (png, jpg, webp) each with a .txt caption of the same name, or a metadata.jsonl",
                dir.display()
            );
        }
        let mut examples = Vec::with_capacity(pairs.len());
        for (path, caption) in pairs {
            let image = image_io::load_rgb(&path)?;
            examples.push(Example { source: path.display().to_string(), caption, image });
        }
        Self::from_examples(examples, resolution, crop)
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
        Ok(Self { examples, width, height, resolution, crop })
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

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `name.png` + `name.txt` pairs, sorted by file name so the dataset order never depends on the file system.
fn read_caption_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
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
        pairs.push((img, caption.trim().to_string()));
    }
    Ok(pairs)
}

/// HF `imagefolder` metadata: one JSON object per line with `file_name` and `text` (or `caption`).
fn read_metadata(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
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
        pairs.push((img, caption.to_string()));
    }
    Ok(pairs)
}
