//! The CLIP tokenizer files of a hub SD repo (vocab.json, merges.txt, tokenizer_config.json,
//! special_tokens_map.json), built from the original BPE file `bpe_simple_vocab_16e6.txt.gz`:
//! 256 byte characters, the same with `</w>`, the first 48 894 merges joined, then `<|startoftext|>` and
//! `<|endoftext|>` — 49 408 entries, identical to `openai/clip-vit-large-patch14`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::Path;

const MERGES: usize = 48_894;

/// CLIP's reversible byte → printable character table (GPT-2 `bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    // Vocabulary order is the table's insertion order (printable bytes first), not byte order.
    cs.iter().map(|&c| char::from_u32(c).unwrap_or('?')).collect()
}

/// Write the four tokenizer files into `dest`; `pad` is `<|endoftext|>` (SD1, SDXL 1st) or `!` (SD2, SDXL 2nd).
pub fn write_clip_tokenizer(bpe_gz: &Path, dest: &Path, pad: &str) -> Result<()> {
    let file =
        std::fs::File::open(bpe_gz).with_context(|| format!("cannot open the CLIP vocabulary {}", bpe_gz.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not a gzip text file", bpe_gz.display()))?;
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() < MERGES + 1 {
        bail!("{} has {} lines; the CLIP BPE file has 262 146", bpe_gz.display(), lines.len());
    }
    let merges = &lines[1..=MERGES];
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    vocab.extend(chars.iter().map(|c| format!("{c}</w>")));
    for m in merges {
        vocab.push(m.split(' ').collect::<String>());
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let map: Map<String, Value> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    std::fs::create_dir_all(dest)?;
    std::fs::write(dest.join("vocab.json"), serde_json::to_string(&Value::Object(map))?)?;
    let mut m = String::from("#version: 0.2\n");
    for l in merges {
        m.push_str(l);
        m.push('\n');
    }
    std::fs::write(dest.join("merges.txt"), m)?;
    let cfg = json!({
        "add_prefix_space": false,
        "bos_token": "<|startoftext|>",
        "do_lower_case": true,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>"
    });
    std::fs::write(dest.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)? + "\n")?;
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>"
    });
    std::fs::write(dest.join("special_tokens_map.json"), serde_json::to_string_pretty(&special)? + "\n")?;
    Ok(())
}
