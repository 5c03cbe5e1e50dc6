//! Out-of-memory errors as one line a user can act on.
//!
//! LibTorch reports a failed allocation as a paragraph (CUDA's caching allocator explains its pools and
//! `PYTORCH_CUDA_ALLOC_CONF`) or a bare byte count (the CPU allocator), possibly followed by a C++ backtrace. What
//! the user needs is how much was asked, how much there is, and which of our options makes the run fit.

/// The one-line explanation for an out-of-memory error anywhere in `err`'s chain, or `None` for other errors.
pub fn explain(err: &anyhow::Error) -> Option<String> {
    let text = err.chain().map(|c| c.to_string()).find(|m| is_oom(m))?;
    explain_message(&text)
}

/// [`explain`] for a message (a LibTorch error text, or a panic's: tch's infallible calls panic with it).
pub fn explain_message(text: &str) -> Option<String> {
    if !is_oom(text) {
        return None;
    }
    let first = text.lines().find(|l| is_oom(l)).unwrap_or(text).trim();
    if first.contains("CUDA out of memory") || first.contains("CUDA error: out of memory") {
        let asked =
            between(first, "Tried to allocate ", ".").map(|s| format!(" tried to allocate {s};")).unwrap_or_default();
        let total = between(first, "total capacity of ", " of which");
        let free = between(first, "of which ", " is free");
        let gpu = between(first, "GPU ", " has").map(|g| format!("GPU {g}")).unwrap_or_else(|| "the GPU".into());
        let have = match (total, free) {
            (Some(t), Some(f)) => format!(" {gpu} has {t}, {f} free;"),
            _ => String::new(),
        };
        return Some(format!(
            "out of GPU memory:{asked}{have} to fit, try --offload model (components take turns on the GPU), \
             --offload sequential (layer by layer, slowest), --vae-tiling, or a smaller size or batch"
        ));
    }
    let asked = between(first, "you tried to allocate ", " bytes")
        .and_then(|b| b.trim().parse::<u64>().ok())
        .map(|b| format!(" tried to allocate {}", human(b)))
        .unwrap_or_default();
    let avail = crate::memory::available_bytes().map(|a| format!(" with {} available", human(a))).unwrap_or_default();
    Some(format!(
        "out of memory:{asked}{avail}; to fit, try --vae-tiling, bf16 (--dtype bf16), or a smaller size or batch"
    ))
}

/// `err` replaced by its one-line explanation when it is an out-of-memory error (LibTorch's paragraph is dropped),
/// else `err` unchanged.
pub fn with_advice(err: anyhow::Error) -> anyhow::Error {
    match explain(&err) {
        Some(line) => anyhow::Error::msg(line),
        None => err,
    }
}

/// The text of a panic payload (`panic!` with a `String` or a literal).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())
}

fn is_oom(m: &str) -> bool {
    m.contains("out of memory") || m.contains("can't allocate memory") || m.contains("OutOfMemoryError")
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let rest = &s[from..];
    // "20.00 MiB." ends at the first ". " or the line's end; numbers have their own dots.
    let to = if end == "." { rest.find(". ").unwrap_or(rest.len()) } else { rest.find(end)? };
    Some(rest[..to].trim())
}

fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_messages_become_one_line_with_the_numbers() {
        let msg = "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 7.79 GiB of \
                   which 1.12 GiB is free. Including non-PyTorch memory, this process has 6.66 GiB memory in use. \
                   Of the allocated memory 6.20 GiB is allocated by PyTorch.\nException raised from malloc at \
                   CUDACachingAllocator.cpp:1\nframe #0: c10::Error::Error";
        let e = anyhow::anyhow!(msg.to_string()).context("decoding the latents");
        let line = explain(&e).expect("an OOM");
        assert_eq!(
            line,
            "out of GPU memory: tried to allocate 2.50 GiB; GPU 0 has 7.79 GiB, 1.12 GiB free; to fit, try \
             --offload model (components take turns on the GPU), --offload sequential (layer by layer, slowest), \
             --vae-tiling, or a smaller size or batch"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn cpu_messages_name_the_bytes_and_other_errors_pass_through() {
        let e = anyhow::anyhow!(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 21474836480 bytes. Error code 12"
        );
        let line = explain(&e).expect("an OOM");
        assert!(line.starts_with("out of memory: tried to allocate 20.00 GiB"), "{line}");
        assert!(line.contains("--vae-tiling"), "{line}");
        let other = anyhow::anyhow!("shape mismatch");
        assert!(explain(&other).is_none());
        assert_eq!(with_advice(other).to_string(), "shape mismatch");
    }
}
