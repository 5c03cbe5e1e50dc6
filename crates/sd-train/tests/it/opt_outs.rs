//! A dataset folder whose files carry every kind of reservation, in PNG, JPEG and WebP, next to files without:
//! the exact include/exclude decision and reason of each, `--ignore-opt-outs`, the deny list, TDMRep's
//! `tdmrep.json` (first matching rule, the image's own value superseding it), and the manifest and model card.

use crate::common;

use image::RgbImage;
use sd_provenance::formats::{encode, OutputFormat};
use sd_provenance::metadata::{xmp::KEYWORD, TextChunk};
use sd_train::dataset::{Crop, Dataset};
use sd_train::optout::{DenyList, OptOutPolicy, TdmRepFile, Verdict};
use sd_train::record::{self, CardRun, ManifestEntry};
use std::io::Cursor;
use std::path::Path;

fn picture(seed: u8) -> RgbImage {
    RgbImage::from_fn(16, 16, |x, y| image::Rgb([seed.wrapping_mul(40), (x * 16) as u8, (y * 16) as u8]))
}

fn xmp(props: &str) -> String {
    format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:plus=\"http://ns.useplus.org/ldf/xmp/1.0/\" \
         xmlns:tdm=\"http://www.w3.org/ns/tdmrep/\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\" {props}/>\
         </rdf:RDF></x:xmpmeta>"
    )
}

fn format_of(name: &str) -> OutputFormat {
    OutputFormat::from_path(Path::new(name)).unwrap()
}

fn write(dir: &Path, name: &str, seed: u8, chunks: &[TextChunk]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, encode(&picture(seed), format_of(name), 95, false, chunks).unwrap()).unwrap();
}

/// Signed by another tool with `c2pa.ai_training: notAllowed`.
fn write_c2pa(dir: &Path, name: &str, seed: u8) {
    let keys = tempfile::tempdir().unwrap();
    let (id, _) = sd_provenance::credentials::Identity::local(keys.path()).unwrap();
    let key = std::fs::read(keys.path().join("c2pa/signer-key.pem")).unwrap();
    let def = serde_json::json!({
        "claim_generator_info": [{"name": "a camera app", "version": "2.0"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
                "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": {"c2pa.ai_training": {"use": "notAllowed"}}}},
        ],
    });
    let mut b = c2pa::Builder::from_context(c2pa::Context::new()).with_definition(def.to_string().as_str()).unwrap();
    let signer = c2pa::create_signer::from_keys(id.chain_pem.as_bytes(), &key, id.alg, None).unwrap();
    let format = format_of(name);
    let plain = encode(&picture(seed), format, 95, false, &[]).unwrap();
    let mut out = Cursor::new(Vec::new());
    b.sign(signer.as_ref(), format.mime(), &mut Cursor::new(plain), &mut out).unwrap();
    std::fs::write(dir.join(name), out.into_inner()).unwrap();
}

const PROHIBITED: &str = "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING";

/// (file, verdict, reason kinds) expected for the dataset [`build`] writes.
fn expected() -> Vec<(&'static str, Verdict, Vec<&'static str>)> {
    use Verdict::*;
    vec![
        ("clean.png", Used, vec![]),
        ("clean.jpg", Used, vec![]),
        ("clean.webp", Used, vec![]),
        ("allowed.png", Used, vec![]),
        ("plus.png", Excluded, vec!["plus:DataMining"]),
        ("plus.jpg", Excluded, vec!["plus:DataMining"]),
        ("plus.webp", Excluded, vec!["plus:DataMining"]),
        ("tdm.png", Excluded, vec!["tdm:reservation"]),
        ("tdm.jpg", Excluded, vec!["tdm:reservation"]),
        ("tdm.webp", Excluded, vec!["tdm:reservation"]),
        ("noai.png", Excluded, vec!["noai"]),
        ("noai.jpg", Excluded, vec!["noai"]),
        ("noai.webp", Excluded, vec!["noai"]),
        ("c2pa.png", Excluded, vec!["c2pa.training-mining"]),
        ("c2pa.jpg", Excluded, vec!["c2pa.training-mining"]),
        ("c2pa.webp", Excluded, vec!["c2pa.training-mining"]),
        ("site/reserved/a.png", Excluded, vec!["tdmrep.json"]),
        ("site/reserved/own-zero.jpg", Used, vec![]),
        ("site/open/b.webp", Used, vec![]),
        ("denied.png", Excluded, vec!["opt-out list"]),
        ("scraped.jpg", Excluded, vec!["opt-out list"]),
        ("both.png", Excluded, vec!["plus:DataMining", "noai"]),
    ]
}

/// Writes the dataset and returns the deny list's text.
fn build(dir: &Path) -> String {
    let plus = xmp(&format!("plus:DataMining=\"{PROHIBITED}\""));
    let allowed = xmp("plus:DataMining=\"http://ns.useplus.org/ldf/vocab/DMI-ALLOWED\"");
    let tdm = xmp("tdm:reservation=\"1\" tdm:policy=\"https://example.org/policy.json\"");
    let tdm0 = xmp("tdm:reservation=\"0\"");
    let noai_xmp = xmp("dc:rights=\"noai, noimageai\"");
    let mut seed = 0u8;
    let mut next = || {
        seed += 1;
        seed
    };
    for f in ["clean.png", "clean.jpg", "clean.webp", "denied.png", "scraped.jpg", "site/open/b.webp"] {
        write(dir, f, next(), &[]);
    }
    write(dir, "allowed.png", next(), &[TextChunk::itxt(KEYWORD, &allowed)]);
    for f in ["plus.png", "plus.jpg", "plus.webp"] {
        write(dir, f, next(), &[TextChunk::itxt(KEYWORD, &plus)]);
    }
    for f in ["tdm.png", "tdm.jpg", "tdm.webp"] {
        write(dir, f, next(), &[TextChunk::itxt(KEYWORD, &tdm)]);
    }
    write(dir, "noai.png", next(), &[TextChunk::new("Comment", "noai")]);
    write(dir, "noai.jpg", next(), &[TextChunk::new("parameters", "noimageai")]); // EXIF UserComment
    write(dir, "noai.webp", next(), &[TextChunk::itxt(KEYWORD, &noai_xmp)]);
    for f in ["c2pa.png", "c2pa.jpg", "c2pa.webp"] {
        write_c2pa(dir, f, next());
    }
    write(dir, "site/reserved/a.png", next(), &[]);
    write(dir, "site/reserved/own-zero.jpg", next(), &[TextChunk::itxt(KEYWORD, &tdm0)]);
    let both = xmp(&format!("plus:DataMining=\"{PROHIBITED}\" dc:rights=\"noai\""));
    write(dir, "both.png", next(), &[TextChunk::itxt(KEYWORD, &both)]);
    std::fs::write(
        dir.join("tdmrep.json"),
        r#"[{"location": "/site/reserved/", "tdm-reservation": 1, "tdm-policy": "https://example.org/p.json"},
            {"location": "/site/", "tdm-reservation": 0}]"#,
    )
    .unwrap();
    let mut meta = String::new();
    for (i, (file, _, _)) in expected().iter().enumerate() {
        let source = if *file == "scraped.jpg" {
            "https://images.example.net/cat.jpg".to_string()
        } else {
            format!("https://photos.example.org/{i}")
        };
        let license = if i % 2 == 0 { "cc-by-4.0" } else { "cc0-1.0" };
        meta.push_str(
            &serde_json::json!({"file_name": file, "text": format!("image {i}"), "source": source, "license": license})
                .to_string(),
        );
        meta.push('\n');
    }
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
    let denied = sd_core::hash::sha256_file(&dir.join("denied.png")).unwrap();
    format!("# my deny list\n{denied}\nhttps://images.example.net/cat.jpg  # asked by mail\n")
}

fn decisions(entries: &[ManifestEntry]) -> Vec<(String, Verdict, Vec<String>)> {
    entries.iter().map(|e| (e.file.clone(), e.verdict, e.reasons.iter().map(|r| r.kind.clone()).collect())).collect()
}

fn want(ignore: bool) -> Vec<(String, Verdict, Vec<String>)> {
    expected()
        .into_iter()
        .map(|(f, v, k)| {
            let v = if ignore && v == Verdict::Excluded { Verdict::UsedDespiteOptOut } else { v };
            (f.to_string(), v, k.into_iter().map(String::from).collect())
        })
        .collect()
}

#[test]
fn every_reservation_in_every_container_decides_exactly() {
    let d = tempfile::tempdir().unwrap();
    let deny_text = build(d.path());
    let deny = DenyList::parse(&deny_text, "deny.txt").unwrap();
    let policy = OptOutPolicy { deny, ignore: false };
    let ds = Dataset::open_with_policy(d.path(), None, Crop::Center, &policy).unwrap();
    assert_eq!(decisions(&ds.record.entries), want(false));
    assert_eq!(ds.len(), 6, "only the unreserved images are loaded");
    // reasons say where and what
    let by_file = |f: &str| ds.record.entries.iter().find(|e| e.file == f).unwrap().reasons[0].detail.clone();
    assert_eq!(by_file("plus.jpg"), format!("JPEG APP1 XMP: {PROHIBITED}"));
    assert_eq!(by_file("tdm.webp"), "WebP XMP chunk: 1, policy https://example.org/policy.json");
    assert_eq!(by_file("noai.png"), "PNG tEXt Comment: noai");
    assert_eq!(by_file("noai.jpg"), "JPEG EXIF UserComment: noimageai");
    assert_eq!(by_file("c2pa.webp"), "WebP C2PA manifest (Valid signature): c2pa.ai_training: notAllowed");
    assert_eq!(
        by_file("site/reserved/a.png"),
        "tdmrep.json: location \"/site/reserved/\" has tdm-reservation 1, policy https://example.org/p.json"
    );
    assert_eq!(by_file("denied.png"), "SHA-256 listed in deny.txt");
    assert_eq!(by_file("scraped.jpg"), "source https://images.example.net/cat.jpg listed in deny.txt");
    let e = ds.record.entries.iter().find(|e| e.file == "clean.jpg").unwrap();
    assert_eq!(e.sha256.as_deref(), Some(sd_core::hash::sha256_file(&d.path().join("clean.jpg")).unwrap().as_str()));
    assert_eq!((e.caption.as_str(), e.license.as_deref()), ("image 1", Some("cc0-1.0")));
    assert_eq!(e.source.as_deref(), Some("https://photos.example.org/1"));

    let report = ds.record.exclusion_report();
    assert!(report.starts_with("opt-outs: 22 images checked, 6 used, 16 excluded\n"), "{report}");
    assert!(
        report.contains(&format!("  excluded plus.png: plus:DataMining (PNG iTXt XML:com.adobe.xmp: {PROHIBITED})\n"))
    );
    assert_eq!(report.lines().count(), 17, "{report}");

    // the same folder opened the default way still honours everything but the deny list
    let plain = Dataset::open(d.path(), None, Crop::Center).unwrap();
    assert_eq!(plain.len(), 8);

    let ignoring = OptOutPolicy { deny: DenyList::parse(&deny_text, "deny.txt").unwrap(), ignore: true };
    let all = Dataset::open_with_policy(d.path(), None, Crop::Center, &ignoring).unwrap();
    assert_eq!(decisions(&all.record.entries), want(true));
    assert_eq!(all.len(), 22);
    assert!(all
        .record
        .exclusion_report()
        .starts_with("opt-outs: 22 images checked, 22 used, 0 excluded, 16 reserved but used (--ignore-opt-outs)\n"));
}

#[test]
fn all_reserved_is_an_error_listing_why() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.png", 1, &[TextChunk::new("Comment", "noai")]);
    std::fs::write(d.path().join("a.txt"), "a").unwrap();
    let e = format!("{:#}", Dataset::open(d.path(), None, Crop::Center).err().unwrap());
    assert!(e.contains("every image of dataset") && e.contains("excluded a.png: noai (PNG tEXt Comment: noai)"), "{e}");
}

#[test]
fn tdmrep_patterns_and_errors() {
    let f = TdmRepFile::parse(
        r#"[{"location": "/a/exact.png$", "tdm-reservation": 1},
            {"location": "/a/*-nc.webp", "tdm-reservation": 1},
            {"location": "/lit%2A.png", "tdm-reservation": 1},
            {"location": "/a/", "tdm-reservation": 0},
            {"location": "/", "tdm-reservation": "7"}]"#,
        Path::new("tdmrep.json"),
    )
    .unwrap();
    let r = |p: &str| f.lookup(p).map(|r| (r.location.as_str(), r.reserved));
    assert_eq!(r("/a/exact.png"), Some(("/a/exact.png$", Some(true))));
    assert_eq!(r("/a/exact.png.bak"), Some(("/a/", Some(false))), "`$` anchors the end");
    assert_eq!(r("/a/deep/x-nc.webp"), Some(("/a/*-nc.webp", Some(true))));
    assert_eq!(r("/lit*.png"), Some(("/lit%2A.png", Some(true))), "%2A is a literal star");
    assert_eq!(r("/litx.png"), Some(("/", None)), "a value other than 0 or 1 is unset");
    assert_eq!(r("/A/exact.png"), Some(("/", None)), "matching is case sensitive");
    for (bad, why) in [
        ("{}", "expected a JSON array"),
        ("[{\"tdm-reservation\": 1}]", "rule 1: `location`"),
        ("[{\"location\": \"/\"}]", "rule 1: `tdm-reservation`"),
        ("[{\"location\": \"/%G1\", \"tdm-reservation\": 1}]", "two hex digits"),
    ] {
        let e = format!("{:#}", TdmRepFile::parse(bad, Path::new("x/tdmrep.json")).unwrap_err());
        assert!(e.contains("x/tdmrep.json") && e.contains(why), "{bad}: {e}");
    }
    let e = DenyList::parse("abc\n", "deny.txt").unwrap_err().to_string();
    assert!(e.contains("deny.txt line 1") && e.contains("neither a SHA-256"), "{e}");
}

#[test]
fn manifest_and_card() {
    let d = tempfile::tempdir().unwrap();
    let deny_text = build(d.path());
    let out = tempfile::tempdir().unwrap();
    let mut cfg = common::config(out.path().join("my-model"));
    cfg.max_steps = 2;
    cfg.license = Some("openrail".into());
    for ignore in [false, true] {
        let policy = OptOutPolicy { deny: DenyList::parse(&deny_text, "deny.txt").unwrap(), ignore };
        let ds = Dataset::open_with_policy(d.path(), None, Crop::Center, &policy).unwrap();
        let dir = out.path().join(format!("ignore-{ignore}"));
        std::fs::create_dir_all(&dir).unwrap();
        record::write(&dir, &ds.record, &CardRun { cfg: &cfg, steps_done: 2, width: 16, height: 16 }).unwrap();
        let manifest = std::fs::read_to_string(dir.join("dataset_manifest.jsonl")).unwrap();
        let back: Vec<ManifestEntry> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, ds.record.entries);
        let first: serde_json::Value = serde_json::from_str(manifest.lines().nth(4).unwrap()).unwrap();
        assert_eq!(first["file"], "plus.png");
        assert_eq!(first["verdict"], if ignore { "used_despite_opt_out" } else { "excluded" });
        assert_eq!(first["reasons"][0]["kind"], "plus:DataMining");
        assert_eq!(first["license"], "cc-by-4.0");
        assert_eq!(first["source"], "https://photos.example.org/4");
        assert_eq!(first["caption"], "image 4");
        assert_eq!(first["sha256"].as_str().unwrap().len(), 64);

        let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let dataset_name = d.path().canonicalize().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let front = format!(
            "---\nlicense: openrail\nbase_model: {}\nlibrary_name: diffusers\npipeline_tag: text-to-image\ntags:\n\
             - text-to-image\n- diffusers\n- stable-diffusion\n- sd-rs\n{}datasets:\n- {dataset_name}\n---\n",
            common::SD1.trim_end_matches('/'),
            if ignore { "- opt-outs-ignored\n" } else { "" }
        );
        assert!(card.starts_with(&front), "{card}");
        let verb = if ignore { "reserved" } else { "excluded" };
        let (used, excluded) = if ignore { (22, 0) } else { (6, 16) };
        for row in [
            format!("| in the dataset | 22 |\n| used | {used} |\n| excluded | {excluded} |\n"),
            format!("| {verb}: c2pa.training-mining | 3 |\n"),
            format!("| {verb}: noai | 4 |\n"),
            format!("| {verb}: opt-out list | 2 |\n"),
            format!("| {verb}: plus:DataMining | 4 |\n"),
            format!("| {verb}: tdm:reservation | 3 |\n"),
            format!("| {verb}: tdmrep.json | 1 |\n"),
            "## Training content summary (EU AI Act art. 53(1)(d) style)".to_string(),
            format!("- Size: {used} images used of 22 in the dataset"),
            "| optimizer steps | 2 |".to_string(),
            "## Intended use and limitations".to_string(),
            "TDMRep rules came from `tdmrep.json`.".to_string(),
            "The deny list was `deny.txt`.".to_string(),
        ] {
            assert!(card.contains(&row), "card lacks {row:?}:\n{card}");
        }
        if ignore {
            assert!(card.contains("**Opt-outs were ignored (`--ignore-opt-outs`)**: 16 images"), "{card}");
            assert!(card.contains("ignored at the user's explicit request; 16 reserved images used"));
        } else {
            assert!(card.contains("Rights holders' machine-readable opt-outs were honoured"), "{card}");
            assert!(
                card.contains(
                    "- Sources: a local dataset folder (`{dataset_name}`) prepared by the user; sd-rs itself crawled \
                 nothing. 6 of the used images record a source URL, by host: photos.example.org (6)."
                        .replace("{dataset_name}", &dataset_name)
                        .as_str()
                ),
                "{card}"
            );
            assert!(card.contains("- Licences recorded for the used images: cc-by-4.0 (3), cc0-1.0 (3)."), "{card}");
        }
        let summary = record::card_summary(&card).unwrap();
        assert!(summary
            .starts_with(&format!("  license: openrail\n  base_model: {}\n  datasets: {dataset_name}\n", common::SD1)));
        assert!(summary.contains("## Training data") && summary.contains("## Training content summary"));
        assert!(!summary.contains("## Training parameters") && !summary.contains("## Intended use"));
    }
}
