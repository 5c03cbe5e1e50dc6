//! The five hostile inputs of issue #23 through the real `sd` binary: each must end with exit 1 or 2, a message
//! naming the file (or flag) and the bound it broke, and a child whose peak resident memory stays under 1 GB
//! (read from the kernel's accounting of the exited child with `wait4`, so the peak cannot be missed between polls).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PEAK_LIMIT_KB: i64 = 1024 * 1024;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run `sd ARGS`, returning (exit code, stderr, peak RSS in KiB of the child).
// The child is reaped by `wait4` (which also reports its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn sd(args: &[&str]) -> (i32, String, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sd");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call on our own child's pid with valid out-pointers; `child` is never waited on by std.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let stderr = reader.join().expect("stderr reader");
    assert!(libc::WIFEXITED(status), "sd was killed by a signal (status {status}):\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic leaked:\n{stderr}");
    let peak_kb = usage.ru_maxrss;
    assert!(peak_kb < PEAK_LIMIT_KB, "peak RSS {} MB ≥ 1 GB:\n{stderr}", peak_kb / 1024);
    (libc::WEXITSTATUS(status), stderr, peak_kb)
}

/// A torch.save-style zip: `archive/data.pkl` (deflated when `deflate`) plus stored storages.
fn torch_zip(path: &Path, pickle: &[u8], deflate: bool) {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let o = SimpleFileOptions::default().compression_method(method);
    z.start_file("archive/data.pkl", o).expect("start");
    z.write_all(pickle).expect("write");
    z.finish().expect("finish");
}

/// `((((…()…),),),)`: a tuple nested `levels` deep, 2 bytes per level.
fn deep_pickle(levels: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2, b')'];
    p.extend(std::iter::repeat_n(0x85u8, levels));
    p.push(b'.');
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A copy of the tiny SD1 test model that the caller may damage.
fn model_copy(dir: &Path) -> PathBuf {
    let src = root().join("fixtures/models/sd1");
    let dst = dir.join("sd1");
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).expect("prefix");
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &to).expect("copy");
    }
    dst
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn generate(model: &Path, out: &Path, extra: &[&str]) -> (i32, String, i64) {
    let o = out.join("{seed}.png");
    let mut args = vec!["generate", "--model", s(model), "a cat", "--steps", "1", "--dtype", "f32"];
    args.extend(["--device", "cpu", "-q", "--seed", "1", "--output", s(&o), "--threads", "1"]);
    args.extend(extra);
    sd(&args)
}

#[test]
fn deeply_nested_pickle_is_refused_by_convert_and_by_embeddings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("deep.ckpt");
    torch_zip(&ckpt, &deep_pickle(300_000), false);
    let out = dir.path().join("out");
    let (code, err, _) = sd(&["convert", s(&ckpt), "-o", s(&out)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("deep.ckpt") && err.contains("pickle depth limit of 100"), "{err}");
    assert!(!out.exists(), "nothing may be written");

    // The same reader serves `.pt` embeddings: one bad file in the folder is an error naming it, not an abort.
    let emb = dir.path().join("emb");
    std::fs::create_dir(&emb).expect("mkdir");
    torch_zip(&emb.join("deep.pt"), &deep_pickle(300_000), false);
    let model = root().join("fixtures/models/sd1");
    let (code, err, _) = generate(&model, dir.path(), &["--embeddings-dir", s(&emb)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("deep.pt") && err.contains("pickle depth limit"), "{err}");
}

#[test]
fn zip_bomb_data_pkl_is_refused_before_it_is_inflated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("bomb.ckpt");
    // 256 MiB of zeros deflate to ~250 KB: four times the data.pkl bound, a 1000× ratio.
    torch_zip(&ckpt, &vec![0u8; 256 << 20], true);
    let (code, err, peak) = sd(&["convert", s(&ckpt), "-o", s(&dir.path().join("out"))]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bomb.ckpt") && err.contains("zip data.pkl size limit of 67108864 bytes"), "{err}");
    assert!(peak < 512 * 1024, "peak RSS {} MB", peak / 1024);
}

#[test]
fn absurd_thread_count_is_a_usage_error() {
    let (code, err, _) = sd(&["generate", "--model", "x", "a cat", "--threads", "100000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threads") && err.contains("1..=1024"), "{err}");
    for (flag, value, bound) in
        [("--steps", "0", "1..=1000"), ("--width", "100000", "8..=8192"), ("--batch-size", "0", "1..=64")]
    {
        let (code, err, _) = sd(&["generate", "--model", "x", "a cat", flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains(bound), "{flag} {value}: {err}");
    }
    // An operator may raise a server limit, but not past the hard bound.
    let (code, err, _) = sd(&["serve", "--model", "x", "--max-steps", "100000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-steps") && err.contains("1..=1000"), "{err}");
}

/// Rewrite one tensor's dtype in a safetensors header (same byte width, so the data stays valid).
fn retype(path: &Path, tensor: &str, dtype: &str) {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("len")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    header[tensor]["dtype"] = serde_json::Value::String(dtype.into());
    let mut text = serde_json::to_string(&header).expect("json");
    assert!(text.len() <= n);
    text.push_str(&" ".repeat(n - text.len()));
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).expect("write");
}

#[test]
fn integer_dtype_for_a_float_weight_names_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model_copy(dir.path());
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    retype(&weights, "conv_in.weight", "I32");
    let (code, err, _) = generate(&model, dir.path(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert!(err.contains("conv_in.weight") && err.contains("I32") && err.contains("floating-point"), "{err}");
    assert!(!dir.path().join("1.png").exists());
}

#[test]
fn config_bigger_than_its_weights_is_reported_without_allocating_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model_copy(dir.path());
    // `{}`: every field at its default, i.e. the full-size SD1.5 UNet (860M parameters, 3.4 GB in f32).
    std::fs::write(model.join("unet/config.json"), "{}").expect("write");
    let (code, err, peak) = generate(&model, dir.path(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("has shape"), "{err}");
    assert!(err.contains("conv_in.weight"), "{err}");
    eprintln!("peak RSS {} MB", peak / 1024);
}
