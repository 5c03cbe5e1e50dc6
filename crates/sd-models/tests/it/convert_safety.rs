//! Hostile and broken checkpoints must be refused with a clear message and leave nothing behind. The malicious
//! pickles are written here, byte by byte, so the test needs no Python and no real payload ever runs.

use sd_models::convert::{self, ConvertOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

fn zip_ckpt(dir: &Path, name: &str, pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> PathBuf {
    use zip::write::SimpleFileOptions;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).expect("create");
    let mut z = zip::ZipWriter::new(f);
    let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).expect("start");
    z.write_all(pickle).expect("write");
    z.start_file("archive/byteorder", o).expect("start");
    z.write_all(b"little").expect("write");
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), o).expect("start");
        z.write_all(bytes).expect("write");
    }
    z.finish().expect("finish");
    path
}

/// `GLOBAL module\nname\n` + a one-string argument tuple + REDUCE: what `pickle.dumps(Evil())` produces.
fn reduce_call(module: &str, name: &str, arg: &str) -> Vec<u8> {
    let mut p = b"\x80\x02c".to_vec();
    p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    p.push(b'X');
    p.extend_from_slice(&(arg.len() as u32).to_le_bytes());
    p.extend_from_slice(arg.as_bytes());
    p.extend_from_slice(b"\x85R.");
    p
}

/// Run the whole `sd convert` path (open, plan, write); return the error text and check nothing was written.
fn convert_fails(input: &Path) -> String {
    let out_parent = tempfile::tempdir().expect("tempdir");
    let out = out_parent.path().join("model");
    let result = (|| -> anyhow::Result<()> {
        let src = convert::open(input)?;
        let plan = convert::plan_checkpoint(src.as_ref(), None, &ConvertOptions::default())?;
        let w = convert::writer::WriteOptions {
            dtype: None,
            overwrite: false,
            config_dir: None,
            vocab: None,
            pipeline: true,
        };
        convert::writer::write_folder(&plan, &[src.as_ref()], &out, &w, |_, _, _| {})
    })();
    let err = format!("{:#}", result.err().unwrap_or_else(|| panic!("{} was accepted", input.display())));
    let left: Vec<_> = std::fs::read_dir(out_parent.path()).expect("ls").collect();
    assert!(left.is_empty(), "{}: files were written: {left:?}", input.display());
    err
}

#[test]
fn code_execution_globals_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = dir.path().join("pwned");
    let cmd = format!("touch {}", canary.display());
    for (module, name) in
        [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("builtins", "exec")]
    {
        let p = zip_ckpt(dir.path(), &format!("{module}_{name}.ckpt"), &reduce_call(module, name, &cmd), &[]);
        let err = convert_fails(&p);
        assert!(err.contains(&format!("{module}.{name}")), "error must name the global: {err}");
        assert!(err.contains("refusing"), "{err}");
    }
    assert!(!canary.exists(), "a payload ran");
}

#[test]
fn stack_global_and_nested_reduce_tricks_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // protocol 4 STACK_GLOBAL spelling of builtins.getattr
    let mut p = b"\x80\x04\x8c\x08builtins\x8c\x07getattr\x93".to_vec();
    p.extend_from_slice(b")R.");
    let err = convert_fails(&zip_ckpt(dir.path(), "stack_global.ckpt", &p, &[]));
    assert!(err.contains("builtins.getattr"), "{err}");
    // OrderedDict() is allowed, but calling its result (a REDUCE on a REDUCE result) is not.
    let p = b"\x80\x02ccollections\nOrderedDict\n)R)R.".to_vec();
    let err = convert_fails(&zip_ckpt(dir.path(), "nested_reduce.ckpt", &p, &[]));
    assert!(err.contains("REDUCE calls a dict"), "{err}");
    // An allowed global called with a smuggled callable argument.
    let p = b"\x80\x02ccollections\nOrderedDict\ncos\nsystem\n\x85R.".to_vec();
    let err = convert_fails(&zip_ckpt(dir.path(), "smuggled.ckpt", &p, &[]));
    assert!(err.contains("os.system"), "{err}");
    // Protocol-0 INST (instantiate by name) is not an opcode torch uses.
    let p = b"(ios\nsystem\nS'id'\n.".to_vec();
    let err = convert_fails(&zip_ckpt(dir.path(), "inst.ckpt", &p, &[]));
    assert!(err.contains("opcode"), "{err}");
}

#[test]
fn broken_containers_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/convert"));
    let good = std::fs::read(fixtures.join("sd1.ckpt")).expect("sd1.ckpt fixture");

    let trunc = dir.path().join("truncated.ckpt");
    std::fs::write(&trunc, &good[..good.len() * 6 / 10]).expect("write");
    let err = convert_fails(&trunc);
    assert!(err.contains("truncated"), "{err}");

    let magic = dir.path().join("wrong.ckpt");
    std::fs::write(&magic, b"GIF89a not a checkpoint at all, just some bytes").expect("write");
    let err = convert_fails(&magic);
    assert!(err.contains("neither a safetensors file nor a PyTorch zip"), "{err}");

    // torch.save(..., _use_new_zipfile_serialization=False): pickled magic number first.
    let legacy = dir.path().join("legacy.ckpt");
    let mut bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&legacy, bytes).expect("write");
    let err = convert_fails(&legacy);
    assert!(err.contains("legacy") && err.contains("safetensors"), "{err}");

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").expect("write");
    assert!(convert_fails(&empty).contains("empty"));
}

#[test]
fn tensor_views_outside_their_storage_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // {"w": _rebuild_tensor_v2(FloatStorage(key "0", numel 2), offset 0, size (4,), stride (1,), False, OrderedDict())}
    let mut p = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage".to_vec();
    p.extend_from_slice(
        b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x04\x85K\x01\x85\x89",
    );
    p.extend_from_slice(b"ccollections\nOrderedDict\n)RtRu.");
    let path = zip_ckpt(dir.path(), "oob.ckpt", &p, &[("0", vec![0u8; 8])]);
    let src = convert::open(&path).expect("the table itself is well-formed");
    assert_eq!(src.shape("w"), Some(vec![4]));
    let err = format!("{:#}", src.load("w").expect_err("out-of-bounds view must fail"));
    assert!(err.contains("past its storage"), "{err}");
}
