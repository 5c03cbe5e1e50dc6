//! Dataset problems are reported with the file concerned, before any training starts.

use crate::common;

use sd_train::dataset::{Crop, Dataset};

fn err(dir: &std::path::Path, resolution: Option<u32>) -> String {
    match Dataset::open(dir, resolution, Crop::Center) {
        Ok(d) => panic!("expected an error, got a dataset of {}", d.len()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn empty_folder() {
    let d = tempfile::tempdir().expect("tempdir");
    assert!(err(d.path(), None).contains("holds no images"));
}

#[test]
fn image_without_caption_names_the_file() {
    let d = tempfile::tempdir().expect("tempdir");
    common::write_folder(d.path(), &common::two_images());
    std::fs::remove_file(d.path().join("img1.txt")).expect("rm");
    let e = err(d.path(), None);
    assert!(e.contains("img1.png") && e.contains("no caption"), "{e}");
}

#[test]
fn unreadable_image_names_the_file() {
    let d = tempfile::tempdir().expect("tempdir");
    common::write_folder(d.path(), &common::two_images());
    std::fs::write(d.path().join("img0.png"), b"not a png").expect("write");
    let e = err(d.path(), None);
    assert!(e.contains("img0.png"), "{e}");
}

#[test]
fn mixed_sizes_need_a_resolution() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut items = common::two_images();
    items[1].1 = common::disc(24, [0, 0, 0], [255, 255, 255]);
    common::write_folder(d.path(), &items);
    let e = err(d.path(), None);
    assert!(
        e.contains("different sizes") && e.contains("img0.png") && e.contains("img1.png") && e.contains("--resolution"),
        "{e}"
    );
    // With a resolution both become 16×16; a random crop draws its offsets from the generator.
    let ds = Dataset::open(d.path(), Some(16), Crop::Random).expect("resized dataset");
    assert_eq!((ds.width, ds.height), (16, 16));
    let px = ds.pixels(1, &mut sd_core::TorchGenerator::new(0), tch::Device::Cpu).expect("pixels");
    assert_eq!(px.size(), [3, 16, 16]);
}

#[test]
fn metadata_jsonl() {
    let d = tempfile::tempdir().expect("tempdir");
    let items = common::two_images();
    for (i, (_, img)) in items.iter().enumerate() {
        img.save(d.path().join(format!("x{i}.png"))).expect("save");
    }
    std::fs::write(
        d.path().join("metadata.jsonl"),
        "{\"file_name\": \"x0.png\", \"text\": \"zero\"}\n{\"file_name\": \"x1.png\"}\n",
    )
    .expect("write");
    let e = err(d.path(), None);
    assert!(e.contains("line 2") && e.contains("x1.png") && e.contains("no caption"), "{e}");
    std::fs::write(
        d.path().join("metadata.jsonl"),
        "{\"file_name\": \"x0.png\", \"text\": \"zero\"}\n{\"file_name\": \"x1.png\", \"text\": \"one\"}\n",
    )
    .expect("write");
    let ds = Dataset::open(d.path(), None, Crop::Center).expect("dataset");
    assert_eq!(ds.examples.iter().map(|e| e.caption.as_str()).collect::<Vec<_>>(), ["zero", "one"]);
}
