//! Shared by the robustness tests (`tests/robustness.rs`) and the mutation fuzzer (`examples/fuzz.rs`, run by
//! `cargo xtask fuzz`): every reader of untrusted input behind one signature, the malformed corpus with its
//! expected errors, and a stable-toolchain mutation fuzzer over that corpus.
#![allow(dead_code)]

use anyhow::{bail, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A reader of untrusted input: reads the file at the path fully (every tensor, every chunk) or fails.
pub struct Reader {
    pub name: &'static str,
    /// Extension the fuzzer gives its inputs (some readers dispatch on it).
    pub ext: &'static str,
    pub run: fn(&Path) -> Result<()>,
}

pub const READERS: &[Reader] = &[
    Reader { name: "safetensors", ext: "safetensors", run: read_safetensors },
    Reader { name: "weights", ext: "safetensors", run: read_weights },
    Reader { name: "pickle", ext: "pkl", run: read_pickle },
    Reader { name: "ckpt", ext: "ckpt", run: read_ckpt },
    Reader { name: "embedding", ext: "pt", run: read_embedding },
    Reader { name: "image", ext: "png", run: read_image },
    Reader { name: "metadata", ext: "png", run: read_metadata },
    Reader { name: "unet-config", ext: "json", run: read_configs },
    Reader { name: "ip-adapter", ext: "safetensors", run: read_ip_adapter },
    Reader { name: "prompt", ext: "txt", run: read_prompt },
    Reader { name: "sd3-checkpoint", ext: "safetensors", run: read_sd3_checkpoint },
    Reader { name: "spiece", ext: "model", run: read_spiece },
];

pub fn reader(name: &str) -> Option<&'static Reader> {
    READERS.iter().find(|r| r.name == name)
}

fn read_safetensors(p: &Path) -> Result<()> {
    let files = sd_core::weights::SafeTensorsFiles::open(&[p.to_path_buf()])?;
    let names: Vec<String> = files.names().map(String::from).collect();
    for n in names {
        let _ = files.load(&n)?;
    }
    Ok(())
}

/// A model that wants `conv_in.weight` [4,4,3,3] and `conv_in.bias` [4] as floats and `position_ids` [1,4] raw:
/// the loader's header checks (dtype, shape, missing, unused) on files a few hundred bytes long.
fn read_weights(p: &Path) -> Result<()> {
    let vb = sd_core::VarBuilder::from_safetensors(&[p.to_path_buf()], tch::Kind::Float, tch::Device::Cpu)?;
    let w = vb.get(&[4, 4, 3, 3], "conv_in.weight")?;
    let b = vb.get(&[4], "conv_in.bias")?;
    let _ = vb.get_raw(&[1, 4], "position_ids")?;
    vb.finish("test model", &[])?;
    // Used as a model would: a float convolution.
    let x = tch::Tensor::f_zeros([1, 4, 8, 8], (tch::Kind::Float, tch::Device::Cpu))?;
    let _ = x.f_conv2d(&w, Some(&b), [1], [1], [1], 1)?;
    Ok(())
}

fn read_pickle(p: &Path) -> Result<()> {
    sd_models::convert::pickle::load(&std::fs::read(p)?)?;
    Ok(())
}

fn read_ckpt(p: &Path) -> Result<()> {
    use sd_models::convert::TensorSource;
    let ck = sd_models::convert::ckpt::CkptFile::open(p)?;
    for n in ck.names() {
        let _ = ck.load(&n)?;
    }
    Ok(())
}

fn read_embedding(p: &Path) -> Result<()> {
    sd_pipeline::prompt::embeddings::read_embedding_file(p)?;
    Ok(())
}

fn read_image(p: &Path) -> Result<()> {
    sd_core::image_io::load_rgb(p)?;
    Ok(())
}

/// PNG chunks and text, or JPEG segments: the metadata `sd inspect` reads before it decodes any pixel.
fn read_metadata(p: &Path) -> Result<()> {
    use sd_provenance::{jpeg_meta, png_chunks};
    let bytes = std::fs::read(p)?;
    if png_chunks::is_png(&bytes) {
        let chunks = png_chunks::read_chunks(&bytes)?;
        png_chunks::dimensions(&chunks)?;
        for c in &chunks {
            png_chunks::decode_text(c)?;
        }
    } else if jpeg_meta::is_jpeg(&bytes) {
        jpeg_meta::read(&bytes)?;
    } else {
        bail!("{}: not a PNG or JPEG image", p.display());
    }
    Ok(())
}

/// The UNet config as the loader reads it (parse, then resolve per-block values); the fuzzer also feeds the
/// same bytes to the VAE and CLIP config readers, whose errors are not part of the expected text.
fn read_configs(p: &Path) -> Result<()> {
    let _ = sd_models::vae::VaeConfig::from_file(p);
    let _ = sd_models::clip::ClipTextConfig::from_file(p);
    let cfg = sd_models::unet::config::UNetConfig::from_file(p)?;
    cfg.resolve()?;
    Ok(())
}

/// An original IP-Adapter file, loaded and its projection run on zeros of the width it takes.
fn read_ip_adapter(p: &Path) -> Result<()> {
    let a = sd_models::ip_adapter::IpAdapter::load(p, tch::Kind::Float, tch::Device::Cpu)?;
    let shape: Vec<i64> = if a.reads_hidden_states() { vec![1, 3, a.input_dim()] } else { vec![1, a.input_dim()] };
    let _tokens = a.project(&tch::Tensor::f_zeros(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu))?)?;
    Ok(())
}

/// A single-file SD3 checkpoint: detected, planned (config inferred from the shapes, every count bounded) and read.
fn read_sd3_checkpoint(p: &Path) -> Result<()> {
    let src = sd_models::convert::open(p)?;
    let plan = sd_models::convert::sd3::plan(src.as_ref(), None, false)?;
    let _ = sd_models::convert::sd3::load_tensors(src.as_ref(), &plan)?;
    Ok(())
}

/// SD3's T5 tokenizer from a `spiece.model`, then used on text the normaliser and the Unigram lattice must handle.
fn read_spiece(p: &Path) -> Result<()> {
    let tok = sd_models::t5::T5Tokenizer::load_spiece(p)?;
    for text in ["a cat", "  Ｃａｆé\tﬁ 🐉 </s><extra_id_0>", ""] {
        tok.encode(text, 16)?;
    }
    Ok(())
}

fn read_prompt(p: &Path) -> Result<()> {
    let text = String::from_utf8_lossy(&std::fs::read(p)?).into_owned();
    let parsed = sd_pipeline::prompt::parse_prompt_attention(&text);
    if parsed.iter().any(|(_, w)| w.is_nan()) {
        bail!("a NaN weight came out of {text:?}");
    }
    Ok(())
}

/// Run a reader, turning a panic into an error that says so.
pub fn run_caught(r: &Reader, path: &Path) -> std::result::Result<Result<()>, String> {
    QUIET.with(|q| q.set(true));
    let out = catch_unwind(AssertUnwindSafe(|| (r.run)(path)));
    QUIET.with(|q| q.set(false));
    out.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silence panic messages on threads that are fuzzing (they are caught and recorded); others print as usual.
pub fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/malformed")
}

/// (file, reader, expected) rows of `fixtures/malformed/EXPECTED.tsv`.
pub fn corpus() -> Vec<(PathBuf, String, String)> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("EXPECTED.tsv")).expect("fixtures/malformed/EXPECTED.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let (file, reader, expected) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            (dir.join(file), reader.to_string(), expected.to_string())
        })
        .collect()
}

/// xorshift64*: the fuzzer's only source of randomness, seeded for reproducible runs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u64] =
    &[0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 31, 1 << 40, u64::MAX, i64::MAX as u64];

/// One mutation of `data`: bit flips, interesting bytes, truncation, deletion, inflated length fields (LE and BE,
/// 4 and 8 bytes), repeated slices (deep nesting) and splices with another seed.
pub fn mutate(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(5)] as u8;
        }
        2 => data.truncate(rng.below(len + 1)),
        3 if len > 1 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(16)).min(len);
            data.drain(a..b);
        }
        4 | 5 if len >= 4 => {
            let v = INTERESTING[rng.below(INTERESTING.len())].wrapping_add(rng.below(3) as u64);
            let wide = rng.below(2) == 1 && len >= 8;
            let i = rng.below(len - if wide { 7 } else { 3 });
            let bytes: Vec<u8> = match (wide, rng.below(2)) {
                (true, 0) => v.to_le_bytes().to_vec(),
                (true, _) => v.to_be_bytes().to_vec(),
                (false, 0) => (v as u32).to_le_bytes().to_vec(),
                (false, _) => (v as u32).to_be_bytes().to_vec(),
            };
            data[i..i + bytes.len()].copy_from_slice(&bytes);
        }
        6 if len > 0 => {
            // Deep nesting: repeat a short slice hundreds to thousands of times in place.
            let a = rng.below(len);
            let b = (a + 1 + rng.below(3)).min(len);
            let piece = data[a..b].to_vec();
            let times = [10, 200, 2000, 20000][rng.below(4)];
            let rep: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * times).collect();
            data.splice(a..a, rep);
        }
        7 if !other.is_empty() => {
            let a = rng.below(len + 1);
            let s = rng.below(other.len());
            let e = (s + 1 + rng.below(64)).min(other.len());
            data.splice(a..a, other[s..e].iter().copied());
        }
        _ => {
            let i = rng.below(len + 1);
            data.insert(i, rng.next() as u8);
        }
    }
}

/// Shrink a crashing input: drop ever smaller ranges while it still panics.
pub fn minimise(r: &Reader, data: &[u8], path: &Path) -> Vec<u8> {
    let panics = |d: &[u8]| std::fs::write(path, d).is_ok() && run_caught(r, path).is_err();
    let mut best = data.to_vec();
    let mut chunk = best.len() / 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunk > 0 && Instant::now() < deadline {
        let mut i = 0;
        while i + chunk <= best.len() && Instant::now() < deadline {
            let mut cand = best.clone();
            cand.drain(i..i + chunk);
            if panics(&cand) {
                best = cand;
            } else {
                i += chunk;
            }
        }
        chunk /= 2;
    }
    best
}

/// What a fuzz run did for one reader.
#[derive(Default, Clone, Debug)]
pub struct Tally {
    pub inputs: u64,
    pub errors: u64,
    pub crashes: Vec<(Vec<u8>, String)>,
}

/// Mutate the corpus seeds of every reader round-robin until `budget` is spent; return the tally per reader.
/// Inputs go through `work/<reader>.<ext>`, so the last one survives a hard abort for inspection.
pub fn fuzz(budget: Duration, seed: u64, work: &Path, max_len: usize) -> Vec<(&'static str, Tally)> {
    install_quiet_panic_hook();
    std::fs::create_dir_all(work).expect("fuzz work folder");
    let rows = corpus();
    let mut rng = Rng::new(seed);
    let mut out: Vec<(&'static str, Tally, Vec<Vec<u8>>)> = READERS
        .iter()
        .map(|r| {
            let seeds: Vec<Vec<u8>> =
                rows.iter().filter(|(_, rd, _)| rd == r.name).filter_map(|(p, _, _)| std::fs::read(p).ok()).collect();
            (r.name, Tally::default(), seeds)
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < budget {
        for (name, tally, seeds) in out.iter_mut() {
            let Some(r) = reader(name) else { continue };
            if seeds.is_empty() {
                continue;
            }
            let path = work.join(format!("{}.{}", r.name, r.ext));
            for _ in 0..16 {
                let mut data = seeds[rng.below(seeds.len())].clone();
                let other = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut data, &other, &mut rng);
                }
                data.truncate(max_len);
                if std::fs::write(&path, &data).is_err() {
                    continue;
                }
                tally.inputs += 1;
                match run_caught(r, &path) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => tally.errors += 1,
                    Err(msg) => {
                        let small = minimise(r, &data, &path);
                        tally.crashes.push((small, msg));
                    }
                }
            }
        }
    }
    out.into_iter().map(|(n, t, _)| (n, t)).collect()
}
