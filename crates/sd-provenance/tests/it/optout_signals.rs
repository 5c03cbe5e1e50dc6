//! Opt-out signals read from real files the test writes, in every container (PNG, JPEG, WebP): IPTC/PLUS
//! `plus:DataMining` (each vocabulary term), TDMRep `tdm:reservation`, `noai`/`noimageai` in XMP, PNG text and
//! EXIF, C2PA training-mining assertions; files without any read as clean; exiftool reads the XMP we wrote the
//! same way; malformed or oversized XMP is an error naming the bound.

use image::RgbImage;
use sd_provenance::credentials::Identity;
use sd_provenance::formats::{encode, OutputFormat};
use sd_provenance::metadata::{xmp::KEYWORD, TextChunk};
use sd_provenance::optout::{data_mining_prohibits_training, has_noai_marker, scan, ImageSignals, ScanLimits};
use std::io::Cursor;

const FORMATS: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];
const LIMITS: ScanLimits = ScanLimits { max_xmp_bytes: 1 << 20, max_xml_depth: 64, max_chunks: 1000 };

fn picture() -> RgbImage {
    RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 90]))
}

/// An XMP packet with `body` inside one rdf:Description that declares the PLUS and TDMRep namespaces.
fn packet(attrs: &str, body: &str) -> String {
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n \
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n  <rdf:Description rdf:about=\"\" \
         xmlns:plus=\"http://ns.useplus.org/ldf/xmp/1.0/\" xmlns:tdm=\"http://www.w3.org/ns/tdmrep/\" \
         xmlns:dc=\"http://purl.org/dc/elements/1.1/\" {attrs}>\n{body}\n  </rdf:Description>\n </rdf:RDF>\n\
         </x:xmpmeta>\n<?xpacket end=\"w\"?>"
    )
}

fn with_xmp(format: OutputFormat, xmp: &str) -> Vec<u8> {
    encode(&picture(), format, 90, false, &[TextChunk::itxt(KEYWORD, xmp)]).unwrap()
}

fn kinds(s: &ImageSignals) -> Vec<(String, String, String)> {
    s.reservations.iter().map(|r| (r.kind.clone(), r.location.clone(), r.value.clone())).collect()
}

fn xmp_location(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Png => "PNG iTXt XML:com.adobe.xmp",
        OutputFormat::Jpeg => "JPEG APP1 XMP",
        OutputFormat::Webp => "WebP XMP chunk",
    }
}

#[test]
fn plus_data_mining_vocabulary() {
    for term in [
        "DMI-PROHIBITED",
        "DMI-PROHIBITED-AIMLTRAINING",
        "DMI-PROHIBITED-GENAIMLTRAINING",
        "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
        "DMI-PROHIBITED-SEECONSTRAINT",
        "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR",
        "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR",
    ] {
        assert!(data_mining_prohibits_training(&format!("http://ns.useplus.org/ldf/vocab/{term}")), "{term}");
        assert!(data_mining_prohibits_training(term), "{term}");
    }
    for term in ["DMI-UNSPECIFIED", "DMI-ALLOWED", ""] {
        assert!(!data_mining_prohibits_training(&format!("http://ns.useplus.org/ldf/vocab/{term}")), "{term}");
    }
}

#[test]
fn plus_data_mining_in_every_container_and_rdf_form() {
    let v = "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-GENAIMLTRAINING";
    let forms = [
        packet(&format!("plus:DataMining=\"{v}\""), ""),
        packet("", &format!("   <plus:DataMining>{v}</plus:DataMining>")),
        packet("", &format!("   <plus:DataMining rdf:resource=\"{v}\"/>")),
        // another prefix for the same namespace
        packet("xmlns:p2=\"http://ns.useplus.org/ldf/xmp/1.0/\"", &format!("   <p2:DataMining>{v}</p2:DataMining>")),
    ];
    for format in FORMATS {
        for xmp in &forms {
            let s = scan(&with_xmp(format, xmp), LIMITS).unwrap();
            assert_eq!(
                kinds(&s),
                [("plus:DataMining".to_string(), xmp_location(format).to_string(), v.to_string())],
                "{format:?}: {xmp}"
            );
            assert_eq!(s.tdm_reserved, None);
        }
        for allowed in ["DMI-ALLOWED", "DMI-UNSPECIFIED"] {
            let xmp = packet(&format!("plus:DataMining=\"http://ns.useplus.org/ldf/vocab/{allowed}\""), "");
            let s = scan(&with_xmp(format, &xmp), LIMITS).unwrap();
            assert!(s.reservations.is_empty(), "{format:?} {allowed}: {s:?}");
        }
        // the property in a namespace that is not PLUS is not a reservation
        let other = packet("xmlns:o=\"urn:other\" o:DataMining=\"DMI-PROHIBITED\"", "");
        assert!(scan(&with_xmp(format, &other), LIMITS).unwrap().reservations.is_empty());
    }
}

#[test]
fn tdmrep_in_xmp() {
    for format in FORMATS {
        let reserved = packet(
            "",
            "   <tdm:reservation>1</tdm:reservation>\n   <tdm:policy>https://example.org/tdm-policy.json</tdm:policy>",
        );
        let s = scan(&with_xmp(format, &reserved), LIMITS).unwrap();
        assert_eq!(s.tdm_reserved, Some(true), "{format:?}");
        assert_eq!(s.tdm_policy.as_deref(), Some("https://example.org/tdm-policy.json"));
        assert_eq!(s.tdm_location.as_deref(), Some(xmp_location(format)));
        let open = packet("tdm:reservation=\"0\"", "");
        assert_eq!(scan(&with_xmp(format, &open), LIMITS).unwrap().tdm_reserved, Some(false), "{format:?}");
        // TDMRep: any other value is a protocol error, read as unset
        let bad = packet("tdm:reservation=\"2\"", "");
        assert_eq!(scan(&with_xmp(format, &bad), LIMITS).unwrap().tdm_reserved, None, "{format:?}");
        // the JSON-LD spelling of the namespace
        let hash_ns = packet("xmlns:t=\"http://www.w3.org/ns/tdmrep#\" t:reservation=\"1\"", "");
        assert_eq!(scan(&with_xmp(format, &hash_ns), LIMITS).unwrap().tdm_reserved, Some(true), "{format:?}");
    }
}

/// A TIFF block with IFD0 holding one ASCII ImageDescription.
fn exif_description(text: &str) -> Vec<u8> {
    let mut value = text.as_bytes().to_vec();
    value.push(0);
    let mut t = b"II\x2a\0\x08\0\0\0".to_vec();
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&0x010eu16.to_le_bytes());
    t.extend_from_slice(&2u16.to_le_bytes());
    t.extend_from_slice(&(value.len() as u32).to_le_bytes());
    t.extend_from_slice(&(8u32 + 2 + 12 + 4).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&value);
    t
}

/// `bytes` with an APP1 Exif segment (JPEG) or an EXIF chunk (WebP) or an eXIf chunk (PNG) holding `tiff`.
fn with_exif(format: OutputFormat, tiff: &[u8]) -> Vec<u8> {
    let plain = encode(&picture(), format, 90, false, &[]).unwrap();
    match format {
        OutputFormat::Jpeg => {
            let mut seg = vec![0xff, 0xe1];
            seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
            seg.extend_from_slice(b"Exif\0\0");
            seg.extend_from_slice(tiff);
            let mut out = plain[..2].to_vec();
            out.extend_from_slice(&seg);
            out.extend_from_slice(&plain[2..]);
            out
        }
        OutputFormat::Png => {
            let mut chunk = (tiff.len() as u32).to_be_bytes().to_vec();
            chunk.extend_from_slice(b"eXIf");
            chunk.extend_from_slice(tiff);
            let mut h = crc(b"eXIf", tiff).to_be_bytes().to_vec();
            chunk.append(&mut h);
            let ihdr_end = 8 + 8 + 13 + 4;
            let mut out = plain[..ihdr_end].to_vec();
            out.extend_from_slice(&chunk);
            out.extend_from_slice(&plain[ihdr_end..]);
            out
        }
        OutputFormat::Webp => {
            // the writer's own EXIF path: UserComment only; ImageDescription goes in by hand
            let mut body = plain[12..].to_vec();
            body.extend_from_slice(b"EXIF");
            body.extend_from_slice(&(tiff.len() as u32).to_le_bytes());
            body.extend_from_slice(tiff);
            if tiff.len() % 2 == 1 {
                body.push(0);
            }
            let mut out = b"RIFF".to_vec();
            out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
            out.extend_from_slice(b"WEBP");
            out.extend_from_slice(&body);
            out
        }
    }
}

fn crc(kind: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    h.finalize()
}

#[test]
fn noai_markers_in_xmp_text_and_exif() {
    assert_eq!(has_noai_marker("noai, noimageai"), Some("noai"));
    assert_eq!(has_noai_marker("NoImageAI"), Some("noimageai"));
    assert_eq!(has_noai_marker("a noaim painting; no AI here; noairplane"), None);
    for format in FORMATS {
        let xmp = packet("", "   <dc:rights><rdf:Alt><rdf:li xml:lang=\"x-default\">All rights reserved. noai</rdf:li></rdf:Alt></dc:rights>");
        let s = scan(&with_xmp(format, &xmp), LIMITS).unwrap();
        assert_eq!(
            kinds(&s),
            [("noai".to_string(), xmp_location(format).to_string(), "noai".to_string())],
            "{format:?}"
        );
        let s = scan(&with_exif(format, &exif_description("noimageai")), LIMITS).unwrap();
        let name = match format {
            OutputFormat::Png => "PNG",
            OutputFormat::Jpeg => "JPEG",
            OutputFormat::Webp => "WebP",
        };
        assert_eq!(
            kinds(&s),
            [("noai".to_string(), format!("{name} EXIF ImageDescription"), "noimageai".to_string())],
            "{format:?}"
        );
        // UserComment, as A1111-style writers put it (the `parameters` text goes there in JPEG and WebP)
        if format != OutputFormat::Png {
            let bytes = encode(&picture(), format, 90, false, &[TextChunk::new("parameters", "robots: noai")]).unwrap();
            let s = scan(&bytes, LIMITS).unwrap();
            assert_eq!(
                kinds(&s),
                [("noai".to_string(), format!("{name} EXIF UserComment"), "noai".to_string())],
                "{format:?}"
            );
        }
    }
    // PNG text chunks (tEXt and iTXt)
    for chunk in [TextChunk::new("Comment", "noai"), TextChunk::itxt("Disclaimer", "do not train: NOIMAGEAI")] {
        let bytes = encode(&picture(), OutputFormat::Png, 90, false, std::slice::from_ref(&chunk)).unwrap();
        let s = scan(&bytes, LIMITS).unwrap();
        assert_eq!(s.reservations.len(), 1, "{chunk:?}");
        assert_eq!(s.reservations[0].kind, "noai");
        assert!(s.reservations[0].location.starts_with("PNG ") && s.reservations[0].location.ends_with(&chunk.keyword));
    }
}

#[test]
fn files_without_signals_are_clean() {
    for format in FORMATS {
        let plain = encode(&picture(), format, 90, false, &[]).unwrap();
        let s = scan(&plain, LIMITS).unwrap();
        assert!(s.reservations.is_empty() && s.tdm_reserved.is_none(), "{format:?}: {s:?}");
        // our own generated-image labels are not reservations
        let info = sd_provenance::metadata::GenerationInfo { prompt: "a red circle".into(), ..Default::default() };
        let labelled = encode(&picture(), format, 90, false, &sd_provenance::metadata::label_chunks(&info)).unwrap();
        let s = scan(&labelled, LIMITS).unwrap();
        assert!(s.reservations.is_empty() && s.tdm_reserved.is_none(), "{format:?}: {s:?}");
    }
}

/// Signs `bytes` as another tool would, with a training-mining assertion.
fn signed_with_training_mining(format: OutputFormat, entries: serde_json::Value) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = Identity::local(dir.path()).unwrap();
    let key = std::fs::read(dir.path().join("c2pa/signer-key.pem")).unwrap();
    let def = serde_json::json!({
        "claim_generator_info": [{"name": "a camera app", "version": "2.0"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
                "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": entries}},
        ],
    });
    let mut b = c2pa::Builder::from_context(c2pa::Context::new()).with_definition(def.to_string().as_str()).unwrap();
    let signer = c2pa::create_signer::from_keys(id.chain_pem.as_bytes(), &key, id.alg, None).unwrap();
    let mut out = Cursor::new(Vec::new());
    let plain = encode(&picture(), format, 90, false, &[]).unwrap();
    b.sign(signer.as_ref(), format.mime(), &mut Cursor::new(plain), &mut out).unwrap();
    out.into_inner()
}

#[test]
fn c2pa_training_mining_in_every_container() {
    let name = |f: OutputFormat| match f {
        OutputFormat::Png => "PNG",
        OutputFormat::Jpeg => "JPEG",
        OutputFormat::Webp => "WebP",
    };
    for format in FORMATS {
        let reserved = signed_with_training_mining(
            format,
            serde_json::json!({
                "c2pa.ai_inference": {"use": "allowed"},
                "c2pa.ai_generative_training": {"use": "notAllowed"},
            }),
        );
        let s = scan(&reserved, LIMITS).unwrap();
        assert_eq!(
            kinds(&s),
            [(
                "c2pa.training-mining".to_string(),
                format!("{} C2PA manifest (Valid signature)", name(format)),
                "c2pa.ai_generative_training: notAllowed".to_string()
            )],
            "{format:?}"
        );
        // only inference reserved: training is not
        let inference_only = signed_with_training_mining(
            format,
            serde_json::json!({"c2pa.ai_inference": {"use": "notAllowed"}, "c2pa.ai_training": {"use": "allowed"}}),
        );
        assert!(scan(&inference_only, LIMITS).unwrap().reservations.is_empty(), "{format:?}");
    }
}

#[test]
fn exiftool_reads_the_xmp_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let xmp = packet(
        "plus:DataMining=\"http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING\"",
        "   <tdm:reservation>1</tdm:reservation>",
    );
    for format in FORMATS {
        let path = dir.path().join(format!("x.{}", format.name()));
        std::fs::write(&path, with_xmp(format, &xmp)).unwrap();
        let out = std::process::Command::new("exiftool")
            .args(["-j", "-G1", "-XMP:all"])
            .arg(&path)
            .output()
            .expect("exiftool is installed by `cargo xtask setup` (Debian package libimage-exiftool-perl)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let obj = v[0].as_object().unwrap();
        assert_eq!(
            obj["XMP-plus:DataMining"], "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING",
            "{format:?}: {obj:?}"
        );
        let tdm = obj.iter().find(|(k, _)| k.starts_with("XMP-tdm:")).map(|(_, v)| v.clone());
        assert_eq!(tdm, Some(serde_json::json!(1)), "{format:?}: {obj:?}");
        // and our reader agrees
        let s = scan(&std::fs::read(&path).unwrap(), LIMITS).unwrap();
        assert_eq!(s.reservations.len(), 1);
        assert_eq!(s.tdm_reserved, Some(true));
    }
}

#[test]
fn bounded_and_malformed_xmp_is_an_error() {
    let big = packet("", &format!("<dc:description>{}</dc:description>", "x".repeat(2 << 20)));
    let e = format!("{:#}", scan(&with_xmp(OutputFormat::Png, &big), LIMITS).unwrap_err());
    assert!(e.contains("XMP packet limit of 1048576 bytes"), "{e}");
    let deep = packet("", &format!("{}{}", "<dc:a>".repeat(100), "</dc:a>".repeat(100)));
    let e = format!("{:#}", scan(&with_xmp(OutputFormat::Jpeg, &deep), LIMITS).unwrap_err());
    assert!(e.contains("XMP depth limit of 64 levels"), "{e}");
    let broken = packet("", "<plus:DataMining>DMI-PROHIBITED</plus:Other>");
    let e = format!("{:#}", scan(&with_xmp(OutputFormat::Webp, &broken), LIMITS).unwrap_err());
    assert!(e.contains("WebP XMP chunk") && e.contains("malformed XMP"), "{e}");
    let entity = packet("", "<dc:title>&custom;</dc:title>");
    let e = format!("{:#}", scan(&with_xmp(OutputFormat::Png, &entity), LIMITS).unwrap_err());
    assert!(e.contains("undeclared entity"), "{e}");
    let few = ScanLimits { max_chunks: 3, ..LIMITS };
    let e = format!("{:#}", scan(&with_xmp(OutputFormat::Png, &packet("", "")), few).unwrap_err());
    assert!(e.contains("image chunks limit of 3"), "{e}");
}
