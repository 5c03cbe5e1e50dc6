//! The mutation fuzzer on the stable toolchain, for long runs: `cargo xtask fuzz --minutes N` (which runs this).
//!
//! Mutates the seeds of `fixtures/malformed/` (byte flips, truncations, inflated length fields, deep nesting,
//! splices) through every reader of untrusted input, in-process, catching panics. Each crash is minimised and
//! written to `fixtures/malformed/crashes/<reader>-<n>.<ext>`, where the `robustness` test replays it. Prints the
//! inputs tried per reader. An abort that cannot be caught (stack overflow, out of memory) leaves the input that
//! caused it in `target/fuzz/<reader>.<ext>`.
//!
//! Usage: `fuzz [--minutes N | --seconds N] [--seed S]`

#[path = "../tests/it/robust/mod.rs"]
mod robust;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 60u64;
    let mut seed = 1u64;
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), v) {
            ("--minutes", Some(m)) => secs = m * 60,
            ("--seconds", Some(s)) => secs = s,
            ("--seed", Some(s)) => seed = s,
            _ => {
                eprintln!("usage: fuzz [--minutes N | --seconds N] [--seed S]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = root.join("target/fuzz");
    let start = std::time::Instant::now();
    let tallies = robust::fuzz(Duration::from_secs(secs), seed, &work, 64 * 1024);
    let crash_dir = robust::corpus_dir().join("crashes");
    let mut crashes = 0;
    println!("fuzzed {:.0} s, seed {seed}", start.elapsed().as_secs_f64());
    println!("{:<12} {:>10} {:>10} {:>8}", "reader", "inputs", "errors", "crashes");
    for (name, t) in &tallies {
        println!("{name:<12} {:>10} {:>10} {:>8}", t.inputs, t.errors, t.crashes.len());
        let ext = robust::reader(name).map_or("bin", |r| r.ext);
        for (data, msg) in &t.crashes {
            std::fs::create_dir_all(&crash_dir).ok();
            let path = crash_dir.join(format!("{name}-{seed}-{crashes}.{ext}"));
            std::fs::write(&path, data).ok();
            println!("  crash: {msg} -> {} ({} bytes)", path.display(), data.len());
            crashes += 1;
        }
    }
    std::process::exit(if crashes == 0 { 0 } else { 1 });
}
