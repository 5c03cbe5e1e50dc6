//! Metadata chunks: A1111 infotext build/parse, XMP and AIGC labels, read back with the independent `png` crate
//! decoder (exact string equality).

use image::RgbImage;
use sd_provenance::metadata::{encode_png, infotext, label_chunks, xmp, AigcLabel, GenerationInfo, Mode, TextChunk};
use sd_provenance::watermark::{Payload, WatermarkOutcome};
use std::io::Cursor;

fn info(prompt: &str, negative: &str, mode: Mode) -> GenerationInfo {
    GenerationInfo {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        steps: 25,
        sampler: "DPM++ 2M".into(),
        schedule: Some("Karras".into()),
        cfg_scale: 7.5,
        seed: 1234567890123,
        width: 640,
        height: 384,
        model_name: Some("v1-5-pruned-emaonly".into()),
        model_hash: Some("6ce0161689".into()),
        clip_skip: Some(2),
        denoising_strength: (mode != Mode::Txt2Img).then_some(0.75),
        mode,
        watermark: Some(WatermarkOutcome::Applied {
            payload: Payload::SdV1.name(),
            bits: 136,
            method: Default::default(),
        }),
        extra: vec![("Lora hashes".into(), "detail: abc123, style: def456".into())],
        ..Default::default()
    }
}

/// (keyword, text, chunk kind) of every text chunk, decoded by the png crate.
fn read_back(bytes: &[u8]) -> Vec<(String, String, &'static str)> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_ignore_text_chunk(false);
    let reader = dec.read_info().expect("png crate reads our PNG");
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone(), "tEXt"));
    }
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().expect("iTXt text"), "iTXt"));
    }
    assert!(info.compressed_latin1_text.is_empty(), "we never write zTXt");
    out
}

#[test]
fn infotext_matches_a1111_layout_and_round_trips() {
    let gi = info("a cat, sitting: on a mat\nsecond line", "blurry, lowres", Mode::Img2Img);
    let text = infotext::build(&gi.prompt, &gi.negative_prompt, &sd_provenance::metadata::infotext_params(&gi));
    let want = "a cat, sitting: on a mat\nsecond line\nNegative prompt: blurry, lowres\n\
        Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234567890123, Size: 640x384, \
        Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Clip skip: 2, \
        Watermark: invisible-watermark dwtDct StableDiffusionV1, Lora hashes: \"detail: abc123, style: def456\", \
        Version: sd-rs 0.1.0";
    assert_eq!(text, want);
    let p = infotext::parse(&text);
    assert_eq!(p.prompt, gi.prompt);
    assert_eq!(p.negative_prompt, "blurry, lowres");
    assert_eq!(p.get("Lora hashes"), Some("detail: abc123, style: def456"));
    assert_eq!(p.get("Size"), Some("640x384"));
    assert_eq!(p.get("Seed"), Some("1234567890123"));
    assert_eq!(p.params.len(), 13);
}

#[test]
fn infotext_quoting_follows_json_dumps() {
    assert_eq!(infotext::quote("plain value"), "plain value");
    assert_eq!(infotext::quote("a, b"), "\"a, b\"");
    assert_eq!(infotext::quote("say \"hi\": 猫\n"), "\"say \\\"hi\\\": 猫\\n\"");
    assert_eq!(infotext::unquote("\"say \\\"hi\\\": 猫\\n\""), "say \"hi\": 猫\n");
    // empty negative prompt still gets its line; parse gives it back empty
    let t = infotext::build(
        "p",
        "",
        &[("Steps".into(), "20".into()), ("Sampler".into(), "Euler".into()), ("Seed".into(), "1".into())],
    );
    assert_eq!(t, "p\nNegative prompt: \nSteps: 20, Sampler: Euler, Seed: 1");
    let p = infotext::parse(&t);
    assert_eq!((p.prompt.as_str(), p.negative_prompt.as_str(), p.params.len()), ("p", "", 3));
    // a last line with fewer than 3 pairs belongs to the prompt (A1111 rule)
    let p = infotext::parse("hello\nSteps: 20, Seed: 3");
    assert_eq!(p.prompt, "hello\nSteps: 20, Seed: 3");
    assert!(p.params.is_empty());
}

fn check_png(prompt: &str, negative: &str, mode: Mode) {
    let gi = GenerationInfo {
        produce_id: Some("0f4b1c9e-2d7a-4c11-9b1e-55aa00ccdd11".into()),
        ..info(prompt, negative, mode)
    };
    let chunks = label_chunks(&gi);
    let bytes = encode_png(&RgbImage::new(8, 8), &chunks).unwrap();
    let got = read_back(&bytes);
    let find = |k: &str| got.iter().find(|(kw, _, _)| kw == k).unwrap_or_else(|| panic!("chunk {k} missing: {got:?}"));

    let (_, params, kind) = find("parameters");
    assert_eq!(*kind, if prompt.is_ascii() { "tEXt" } else { "iTXt" });
    let parsed = infotext::parse(params);
    assert_eq!(parsed.prompt, prompt);
    assert_eq!(parsed.negative_prompt, negative);
    assert_eq!(parsed.get("Steps"), Some("25"));

    let (_, packet, kind) = find(xmp::KEYWORD);
    assert_eq!(*kind, "iTXt");
    let want_dst = match mode {
        Mode::Txt2Img => "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
        _ => "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia",
    };
    assert_eq!(xmp::property(packet, "DigitalSourceType").as_deref(), Some(want_dst));
    assert_eq!(xmp::property(packet, "CreatorTool").as_deref(), Some("sd-rs 0.1.0"));
    let from_xmp = AigcLabel::parse(&xmp::property(packet, "AIGC").unwrap()).unwrap();

    let (_, aigc, _) = find("AIGC");
    let label = AigcLabel::parse(aigc).unwrap();
    assert_eq!(label, from_xmp);
    assert_eq!(label.label, "1");
    assert_eq!(label.content_producer, "sd-rs");
    assert_eq!(label.produce_id, "0f4b1c9e-2d7a-4c11-9b1e-55aa00ccdd11");
    assert_eq!(
        aigc,
        r#"{"Label":"1","ContentProducer":"sd-rs","ProduceID":"0f4b1c9e-2d7a-4c11-9b1e-55aa00ccdd11","ReservedCode1":"","ContentPropagator":"","PropagateID":"","ReservedCode2":""}"#
    );
    // text chunks sit before IDAT
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    let last_text = bytes.windows(4).rposition(|w| w == b"tEXt" || w == b"iTXt").unwrap();
    assert!(last_text < idat);
}

#[test]
fn ascii_prompt_png_round_trip() {
    check_png("a photo of an astronaut riding a horse, <lora:x:0.8>", "lowres, bad hands", Mode::Txt2Img);
}

#[test]
fn chinese_prompt_png_round_trip() {
    check_png("一只猫坐在垫子上，水墨画风格", "模糊，低质量", Mode::Inpaint);
}

#[test]
fn produce_ids_are_unique_and_watermark_choice_is_recorded() {
    let mut gi = info("p", "", Mode::Txt2Img);
    let a = AigcLabel::parse(&label_chunks(&gi)[2].text).unwrap().produce_id;
    let b = AigcLabel::parse(&label_chunks(&gi)[2].text).unwrap().produce_id;
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    gi.watermark = Some(WatermarkOutcome::Disabled);
    let chunks = label_chunks(&gi);
    assert_eq!(infotext::parse(&chunks[0].text).get("Watermark"), Some("none (--no-watermark)"));
    assert_eq!(xmp::property(&chunks[1].text, "Watermark").as_deref(), Some("none (--no-watermark)"));
}

#[test]
fn text_chunks_ascii_text_and_unicode_itxt() {
    let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 200]));
    let chunks = [
        TextChunk::new("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1"),
        TextChunk::new("Comment", "un chat très mignon, 猫"),
        TextChunk::itxt("XML:com.adobe.xmp", "<x:xmpmeta/>"),
    ];
    let bytes = encode_png(&img, &chunks).unwrap();
    let decoder = png::Decoder::new(Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut buf).unwrap();
    let info = reader.info();
    assert_eq!(info.uncompressed_latin1_text.len(), 1);
    assert_eq!(info.uncompressed_latin1_text[0].keyword, "parameters");
    assert_eq!(info.uncompressed_latin1_text[0].text, chunks[0].text);
    assert_eq!(info.utf8_text.len(), 2);
    let comment = info.utf8_text.iter().find(|c| c.keyword == "Comment").unwrap();
    assert_eq!(comment.get_text().unwrap(), "un chat très mignon, 猫");
    assert!(!comment.compressed);
    assert!(info.utf8_text.iter().any(|c| c.keyword == "XML:com.adobe.xmp"));
    // Text chunks come before the image data, so streaming readers see them.
    let pos = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).unwrap();
    assert!(pos(b"tEXt") < pos(b"IDAT") && pos(b"iTXt") < pos(b"IDAT"));
    assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), img);
    // An invalid keyword is an error, not a panic.
    assert!(encode_png(&img, &[TextChunk::new("", "x")]).is_err());
}
