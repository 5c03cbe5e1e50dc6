//! Shared helpers: tiny synthetic datasets and configs over the tiny sd1 fixture model.
#![allow(dead_code)]

use image::{Rgb, RgbImage};
use sd_train::dataset::{Crop, Dataset, Example};
use sd_train::TrainConfig;
use std::path::{Path, PathBuf};

pub const SD1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1");

/// A `size`×`size` image: a disc of `fg` on `bg`.
pub fn disc(size: u32, fg: [u8; 3], bg: [u8; 3]) -> RgbImage {
    let c = size as f32 / 2.0;
    RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - c, y as f32 + 0.5 - c);
        if dx * dx + dy * dy < (size as f32 * 0.3).powi(2) {
            Rgb(fg)
        } else {
            Rgb(bg)
        }
    })
}

/// Two captioned 16×16 images.
pub fn two_images() -> Vec<(String, RgbImage)> {
    vec![
        ("a red circle on a blue background".into(), disc(16, [230, 20, 20], [20, 20, 200])),
        ("a green circle on a yellow background".into(), disc(16, [20, 200, 20], [240, 230, 30])),
    ]
}

pub fn dataset(items: Vec<(String, RgbImage)>) -> Dataset {
    let examples = items
        .into_iter()
        .enumerate()
        .map(|(i, (caption, image))| Example { source: format!("img{i}"), caption, image })
        .collect();
    Dataset::from_examples(examples, None, Crop::Center).expect("dataset")
}

/// Write items as `imgN.png` + `imgN.txt` into `dir`.
pub fn write_folder(dir: &Path, items: &[(String, RgbImage)]) {
    for (i, (caption, image)) in items.iter().enumerate() {
        image.save(dir.join(format!("img{i}.png"))).expect("save png");
        std::fs::write(dir.join(format!("img{i}.txt")), caption).expect("save caption");
    }
}

pub fn config(output: PathBuf) -> TrainConfig {
    let mut cfg = TrainConfig::new(PathBuf::from(SD1), output);
    cfg.lr = 1e-3;
    cfg.batch_size = 2;
    cfg.seed = 7;
    cfg
}
