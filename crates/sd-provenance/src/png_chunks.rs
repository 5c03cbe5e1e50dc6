//! A small, CRC-checked PNG chunk reader for inspection: text chunks (`tEXt`, `zTXt`, `iTXt`), the header, and
//! which other chunks exist (e.g. C2PA's `caBX`). Never decodes pixels.

use anyhow::{bail, Context, Result};
use std::io::Read;

pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// Compressed text larger than this is refused (a zip bomb guard).
const MAX_TEXT: u64 = 64 << 20;

#[derive(Clone, Debug)]
pub struct Chunk {
    pub kind: [u8; 4],
    pub data: Vec<u8>,
}

impl Chunk {
    pub fn kind_str(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PngText {
    pub keyword: String,
    pub text: String,
    /// "tEXt", "zTXt" or "iTXt".
    pub chunk: String,
}

pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGNATURE)
}

/// All chunks up to and including `IEND`. Errors on a bad signature, a truncated chunk or a CRC mismatch.
pub fn read_chunks(bytes: &[u8]) -> Result<Vec<Chunk>> {
    read_chunks_bounded(bytes, usize::MAX)
}

/// [`read_chunks`], refusing a file of more than `max_chunks` chunks.
pub fn read_chunks_bounded(bytes: &[u8], max_chunks: usize) -> Result<Vec<Chunk>> {
    if !is_png(bytes) {
        bail!("not a PNG file (bad signature)");
    }
    let mut pos = 8usize;
    let mut out = Vec::new();
    loop {
        if out.len() >= max_chunks {
            bail!("PNG has more chunks than the image chunks limit of {max_chunks} chunks");
        }
        if pos + 8 > bytes.len() {
            bail!("truncated PNG: chunk header expected at byte {pos}, file has {} bytes (no IEND)", bytes.len());
        }
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let kind = [bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]];
        let data_start = pos + 8;
        let end = data_start.checked_add(len).and_then(|e| e.checked_add(4));
        let Some(end) = end.filter(|&e| e <= bytes.len() && len <= 0x7fff_ffff) else {
            bail!(
                "truncated PNG: chunk `{}` at byte {pos} claims {len} bytes past the end of the file",
                String::from_utf8_lossy(&kind)
            );
        };
        let data = &bytes[data_start..data_start + len];
        let crc = u32::from_be_bytes([bytes[end - 4], bytes[end - 3], bytes[end - 2], bytes[end - 1]]);
        let mut h = crc32fast::Hasher::new();
        h.update(&kind);
        h.update(data);
        if h.finalize() != crc {
            bail!("corrupt PNG: CRC mismatch in chunk `{}` at byte {pos}", String::from_utf8_lossy(&kind));
        }
        out.push(Chunk { kind, data: data.to_vec() });
        pos = end;
        if &kind == b"IEND" {
            return Ok(out);
        }
    }
}

/// (width, height) from IHDR.
pub fn dimensions(chunks: &[Chunk]) -> Result<(u32, u32)> {
    let ihdr = chunks
        .first()
        .filter(|c| &c.kind == b"IHDR" && c.data.len() == 13)
        .context("PNG has no valid IHDR chunk first")?;
    let d = &ihdr.data;
    Ok((u32::from_be_bytes([d[0], d[1], d[2], d[3]]), u32::from_be_bytes([d[4], d[5], d[6], d[7]])))
}

fn inflate(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_TEXT)
        .read_to_end(&mut out)
        .context("cannot inflate compressed text")?;
    Ok(out)
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn split_nul(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Decodes one text chunk; `None` for other chunk kinds. Malformed text chunks are errors.
pub fn decode_text(c: &Chunk) -> Result<Option<PngText>> {
    let kind = c.kind_str();
    let bad = || anyhow::anyhow!("malformed {kind} chunk");
    let (keyword, text) = match &c.kind {
        b"tEXt" => {
            let (k, t) = split_nul(&c.data).ok_or_else(bad)?;
            (latin1(k), latin1(t))
        }
        b"zTXt" => {
            let (k, rest) = split_nul(&c.data).ok_or_else(bad)?;
            let t = inflate(rest.get(1..).ok_or_else(bad)?)?;
            (latin1(k), latin1(&t))
        }
        b"iTXt" => {
            let (k, rest) = split_nul(&c.data).ok_or_else(bad)?;
            let (&flag, rest) = rest.split_first().ok_or_else(bad)?;
            let rest = rest.get(1..).ok_or_else(bad)?; // compression method
            let (_lang, rest) = split_nul(rest).ok_or_else(bad)?;
            let (_translated, t) = split_nul(rest).ok_or_else(bad)?;
            let t = if flag == 1 { inflate(t)? } else { t.to_vec() };
            (latin1(k), String::from_utf8_lossy(&t).into_owned())
        }
        _ => return Ok(None),
    };
    Ok(Some(PngText { keyword, text, chunk: kind }))
}
