//! `sd train` honours creators' opt-outs by default, says which images it left out and why, and writes the
//! training-data record (manifest and model card) that `sd inspect MODEL_DIR` summarises; images generated from
//! the model name its card. One-step runs on the tiny sd1 fixture.

use image::RgbImage;
use sd_provenance::formats::{encode, OutputFormat};
use sd_provenance::metadata::{xmp::KEYWORD, TextChunk};
use std::path::Path;
use std::process::{Command, Output};

const SD1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/sd1");
const PROHIBITED: &str = "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-GENAIMLTRAINING";

fn sd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

fn xmp(props: &str) -> String {
    format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:plus=\"http://ns.useplus.org/ldf/xmp/1.0/\" \
         xmlns:dc=\"http://purl.org/dc/elements/1.1/\" {props}/></rdf:RDF></x:xmpmeta>"
    )
}

fn square(fg: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb(if (4..12).contains(&x) && (4..12).contains(&y) { fg } else { [0, 0, 255] })
    })
}

fn write_dataset(dir: &Path) {
    let files: [(&str, [u8; 3], Vec<TextChunk>); 3] = [
        ("red.png", [255, 0, 0], vec![]),
        ("green.jpg", [0, 255, 0], vec![TextChunk::itxt(KEYWORD, &xmp(&format!("plus:DataMining=\"{PROHIBITED}\"")))]),
        ("white.webp", [255, 255, 255], vec![TextChunk::itxt(KEYWORD, &xmp("dc:rights=\"noai\""))]),
    ];
    let mut meta = String::new();
    for (name, fg, chunks) in &files {
        let format = OutputFormat::from_path(Path::new(name)).unwrap();
        std::fs::write(dir.join(name), encode(&square(*fg), format, 95, false, chunks).unwrap()).unwrap();
        let line = serde_json::json!({"file_name": name, "text": format!("a {} square", &name[..name.len() - 4]),
            "source": format!("https://example.org/{name}"), "license": "cc-by-4.0"});
        meta.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    sd().args(["train", "--model", SD1, "--steps", "1", "--lr", "1e-3"])
        .args(extra)
        .arg("--dataset")
        .arg(data)
        .arg("--output")
        .arg(out)
        .output()
        .expect("run sd train")
}

fn manifest_verdicts(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("dataset_manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["file"].as_str().unwrap().to_string(), v["verdict"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn opt_outs_are_excluded_recorded_and_named_by_outputs() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("squares-model");
    let o = train(data.path(), &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "sd train failed: {err}");
    assert!(err.contains("opt-outs: 3 images checked, 1 used, 2 excluded\n"), "{err}");
    assert!(err.contains(&format!("  excluded green.jpg: plus:DataMining (JPEG APP1 XMP: {PROHIBITED})\n")), "{err}");
    assert!(err.contains("  excluded white.webp: noai (WebP XMP chunk: noai)\n"), "{err}");
    assert!(err.contains("dataset: 1 images of 16×16"), "{err}");
    let want = vec![
        ("red.png".to_string(), "used".to_string()),
        ("green.jpg".to_string(), "excluded".to_string()),
        ("white.webp".to_string(), "excluded".to_string()),
    ];
    assert_eq!(manifest_verdicts(&out), want);
    assert_eq!(manifest_verdicts(&out.join("checkpoint-1")), want);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlicense: unknown\nbase_model: "), "{card}");
    assert!(
        card.contains("| used | 1 |\n| excluded | 2 |\n| excluded: noai | 1 |\n| excluded: plus:DataMining | 1 |\n")
    );
    assert!(card.contains("| optimizer steps | 1 |"), "{card}");

    // sd inspect MODEL_DIR prints the card's data summary
    let i = sd().arg("inspect").arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&i.stdout);
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));
    assert!(text.contains("  license: unknown\n") && text.contains("  ## Training data\n"), "{text}");
    assert!(text.contains("  | excluded: plus:DataMining | 1 |\n"), "{text}");
    assert!(text.contains("  ## Training content summary (EU AI Act art. 53(1)(d) style)\n"), "{text}");
    assert!(!text.contains("## Training parameters"), "{text}");
    // a folder that is not a trained model is an error naming what was expected
    let i = sd().arg("inspect").arg(data.path()).output().unwrap();
    assert_eq!(i.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&i.stderr).contains("without a model card"));

    // an image generated from the model names its card, in PNG and JPEG
    let card_hash = sd_core::hash::sha256_file(&out.join("README.md")).unwrap();
    for ext in ["png", "jpg"] {
        let img = root.path().join(format!("gen.{ext}"));
        let g = sd()
            .args(["generate", "a red square", "--steps", "1", "-W", "16", "-H", "16", "--seed", "1"])
            .args(["--dtype", "f32", "--device", "cpu"])
            .arg("--model")
            .arg(&out)
            .arg("--output")
            .arg(&img)
            .output()
            .unwrap();
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
        let i = sd().args(["inspect", "--json"]).arg(&img).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
        let params = v[0]["parameters"]["params"].as_array().expect("parameters").clone();
        let card_param = params.iter().find(|p| p[0] == "Model card").unwrap_or_else(|| panic!("{params:?}"));
        assert_eq!(card_param[1], format!("squares-model/README.md {}", &card_hash[..10]), "{ext}");
    }
}

#[test]
fn ignoring_opt_outs_is_explicit_and_recorded() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let o = train(data.path(), out.path(), &["--ignore-opt-outs", "--license", "openrail"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: --ignore-opt-outs"), "{err}");
    assert!(err.contains("3 used, 0 excluded, 2 reserved but used (--ignore-opt-outs)"), "{err}");
    assert!(err.contains("  USED DESPITE green.jpg: plus:DataMining"), "{err}");
    assert_eq!(
        manifest_verdicts(out.path()).iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
        ["used", "used_despite_opt_out", "used_despite_opt_out"]
    );
    let card = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    assert!(card.starts_with("---\nlicense: openrail\n"), "{card}");
    assert!(card.contains("- opt-outs-ignored\n"), "{card}");
    assert!(card.contains("**Opt-outs were ignored (`--ignore-opt-outs`)**: 2 images"), "{card}");

    // a deny list naming the only unreserved image leaves nothing: exit 1, every reason listed
    let red = sd_core::hash::sha256_file(&data.path().join("red.png")).unwrap();
    let list = data.path().join("deny.txt");
    std::fs::write(&list, format!("{red}\n")).unwrap();
    let o = train(data.path(), out.path(), &["--opt-out-list", list.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is reserved against AI training, nothing is left to train on"), "{err}");
    assert!(err.contains("excluded red.png: opt-out list (SHA-256 listed in"), "{err}");
}
