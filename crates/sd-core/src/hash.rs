//! File hashes. A1111 identifies checkpoints by the first 10 hex digits of the file's SHA-256 ("Model hash").

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Full lowercase hex SHA-256 of a file, streamed (checkpoints are gigabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A1111's short model hash: the first 10 hex digits of the SHA-256.
pub fn a1111_short_hash(path: &Path) -> Result<String> {
    Ok(sha256_file(path)?[..10].to_string())
}
