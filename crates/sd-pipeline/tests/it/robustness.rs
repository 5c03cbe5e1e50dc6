//! Hostile input to every reader of untrusted data, on the stable toolchain:
//! - the committed malformed corpus (`fixtures/malformed/`, made by `scripts/fixtures/gen_96_malformed.py`): each
//!   file through its reader, with the error text it must give;
//! - property tests (proptest) over the safetensors header, the safe pickle reader, the A1111 prompt parser and the
//!   PNG/JPEG metadata readers;
//! - a short bounded run of the mutation fuzzer that `cargo xtask fuzz --minutes N` runs for longer.
//!
//! Never a panic: a panic inside a reader is caught and fails the test with the input that caused it.

use crate::robust;

use proptest::prelude::*;
use robust::{corpus, reader, run_caught};
use std::time::Duration;

#[test]
fn every_malformed_file_gives_its_expected_error() {
    robust::install_quiet_panic_hook();
    let rows = corpus();
    assert!(rows.iter().filter(|(_, _, e)| e != "ok").count() >= 50, "the corpus holds at least 50 malformed files");
    let mut failures = Vec::new();
    let mut times = Vec::new();
    for (path, name, expected) in &rows {
        let r = reader(name).unwrap_or_else(|| panic!("EXPECTED.tsv names unknown reader `{name}`"));
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let start = std::time::Instant::now();
        let outcome = run_caught(r, path);
        times.push((start.elapsed(), file.clone()));
        match (outcome, expected.as_str()) {
            (Err(panic), _) => failures.push(format!("{file} ({name}): PANIC {panic}")),
            (Ok(Ok(())), "ok") => {}
            (Ok(Ok(())), _) => failures.push(format!("{file} ({name}): read without error, expected `{expected}`")),
            (Ok(Err(e)), "ok") => failures.push(format!("{file} ({name}): expected to read, got: {e:#}")),
            (Ok(Err(e)), _) => {
                let msg = format!("{e:#}");
                if !msg.contains(expected.as_str()) {
                    failures.push(format!("{file} ({name}): error lacks `{expected}`: {msg}"));
                }
            }
        }
    }
    times.sort();
    eprintln!("slowest corpus files: {:?}", &times[times.len().saturating_sub(3)..]);
    assert!(
        failures.is_empty(),
        "{} of {} corpus files misbehaved:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Crashes the fuzzer found, minimised and kept (`fixtures/malformed/crashes/<reader>-*`): each must now give an
/// error (or read cleanly), never panic.
#[test]
fn minimised_fuzzer_crashes_no_longer_panic() {
    robust::install_quiet_panic_hook();
    let dir = robust::corpus_dir().join("crashes");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(r) = robust::READERS.iter().find(|r| name.starts_with(&format!("{}-", r.name))) else { continue };
        assert!(run_caught(r, &e.path()).is_ok(), "{name} still panics in reader {}", r.name);
    }
}

#[test]
fn short_fuzz_run_finds_no_crash() {
    let work = tempfile::tempdir().expect("tempdir");
    let seed = std::env::var("SD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5d_2023);
    let tallies = robust::fuzz(Duration::from_secs(15), seed, work.path(), 64 * 1024);
    let mut report = String::new();
    for (name, t) in &tallies {
        report.push_str(&format!("{name}: {} inputs, {} errors, {} crashes\n", t.inputs, t.errors, t.crashes.len()));
        assert!(t.inputs > 0, "reader {name} was never fuzzed");
    }
    eprintln!("{report}");
    let crashes: Vec<String> = tallies
        .iter()
        .flat_map(|(n, t)| t.crashes.iter().map(move |(d, m)| format!("{n}: {m} on {:?}", &d[..d.len().min(200)])))
        .collect();
    assert!(crashes.is_empty(), "the fuzzer crashed readers (seed {seed}):\n{}", crashes.join("\n"));
}

// --- property tests ----------------------------------------------------------------------------------------------

fn write_tmp(bytes: &[u8], ext: &str) -> tempfile::TempPath {
    let f = tempfile::Builder::new().suffix(&format!(".{ext}")).tempfile().expect("temp file");
    std::fs::write(f.path(), bytes).expect("write");
    f.into_temp_path()
}

fn no_panic(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let r = reader(name).expect("reader");
    let p = write_tmp(bytes, r.ext);
    match run_caught(r, &p) {
        Ok(_) => Ok(()),
        Err(panic) => Err(TestCaseError::fail(format!("{name} panicked: {panic}"))),
    }
}

/// A safetensors file whose header is generated: any dtype name, shapes with zero, huge and negative dims, offsets
/// that lie, a header length that may lie.
fn safetensors_file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("I64"),
        Just("I32"),
        Just("U8"),
        Just("BOOL"),
        Just("F8_E4M3"),
        Just("U16"),
        Just("nope")
    ];
    let dim = prop_oneof![0i64..8, Just(-1i64), Just(1 << 31), Just(i64::MAX)];
    let tensor = (dtype, prop::collection::vec(dim, 0..4), 0u64..64, 0u64..64);
    (prop::collection::vec(tensor, 0..4), any::<bool>(), 0usize..64).prop_map(|(ts, lie, data_len)| {
        let entries: Vec<String> = ts
            .iter()
            .enumerate()
            .map(|(i, (d, shape, a, b))| {
                format!(r#""t{i}":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{a},{b}]}}"#)
            })
            .collect();
        let header = format!("{{{}}}", entries.join(","));
        let len = if lie { header.len() as u64 * 3 } else { header.len() as u64 };
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0x3fu8, data_len));
        out
    })
}

/// Bytes drawn mostly from the opcodes the pickle machine knows, so streams get deep into it.
fn pickle_stream() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        3 => prop::sample::select(b"().}]N\x88\x89JKMGX\x8c\x8dCBqrhj\x94t\x85\x86\x87ldaesu\x93QR\x81b02\x8f\x90".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(op, 0..300).prop_map(|mut v| {
        v.splice(0..0, [0x80, 2]);
        v
    })
}

fn png_with_text(keyword: &str, text: &str) -> Vec<u8> {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut crc = crc32(kind);
        crc = crc32_update(crc, data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 1u32.to_be_bytes().to_vec();
    ihdr.extend(1u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(chunk(b"IHDR", &ihdr));
    let mut t = keyword.as_bytes().to_vec();
    t.push(0);
    t.extend(text.chars().map(|c| c as u8));
    png.extend(chunk(b"tEXt", &t));
    png.extend(chunk(b"IEND", b""));
    png
}

fn crc32(data: &[u8]) -> u32 {
    crc32_update(0xffff_ffff, data)
}

fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    crc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_header_reader_never_panics(file in safetensors_file()) {
        no_panic("safetensors", &file)?;
        no_panic("weights", &file)?;
    }

    #[test]
    fn pickle_reader_never_panics(stream in pickle_stream()) {
        robust::install_quiet_panic_hook();
        let out = std::panic::catch_unwind(|| sd_models::convert::pickle::load(&stream).is_ok());
        prop_assert!(out.is_ok(), "pickle::load panicked on {:?}", stream);
    }

    /// Text without A1111 syntax characters comes back as one piece of weight 1.
    #[test]
    fn prompt_without_syntax_is_kept_whole(text in "[a-zA-Z0-9 ,.!?'-]{1,200}") {
        let parsed = sd_pipeline::prompt::parse_prompt_attention(&text);
        let joined: String = parsed.iter().map(|(t, _)| t.as_str()).collect();
        prop_assert_eq!(joined, text);
        prop_assert!(parsed.iter().all(|(_, w)| *w == 1.0));
    }

    #[test]
    fn prompt_parser_never_panics_and_weights_are_finite(text in "[(){}\\[\\]:\\\\a-z0-9. BREAK\u{1F409}-]{0,300}") {
        robust::install_quiet_panic_hook();
        let out = std::panic::catch_unwind(|| sd_pipeline::prompt::parse_prompt_attention(&text));
        prop_assert!(out.is_ok(), "parser panicked on {:?}", text);
        for (_, w) in out.unwrap_or_default() {
            prop_assert!(!w.is_nan(), "NaN weight from {:?}", text);
        }
    }

    /// Any latin-1 keyword/text pair survives a tEXt chunk; any mutation of the file is an error, never a panic.
    #[test]
    fn png_text_round_trips_and_mutations_never_panic(
        keyword in "[a-zA-Z]{1,40}", text in "[ -~\u{a0}-\u{ff}]{0,200}", flip in any::<prop::sample::Index>(), bit in 0u8..8
    ) {
        use sd_provenance::png_chunks;
        let png = png_with_text(&keyword, &text);
        let chunks = png_chunks::read_chunks(&png).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let t = chunks.iter().find_map(|c| png_chunks::decode_text(c).ok().flatten());
        prop_assert_eq!(t.as_ref().map(|t| (t.keyword.as_str(), t.text.as_str())), Some((keyword.as_str(), text.as_str())));
        let mut bad = png.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        no_panic("metadata", &bad)?;
    }

    #[test]
    fn jpeg_segment_reader_never_panics(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut jpeg = vec![0xff, 0xd8];
        jpeg.extend(body);
        no_panic("metadata", &jpeg)?;
    }
}
