//! SentencePiece's `spiece.model` (a `ModelProto` protobuf) read by a small bounded reader: the pieces with their
//! scores and types, the trainer's model type, and the normaliser's precompiled charsmap, which is all that
//! transformers' `T5Tokenizer` takes from it when a `tokenizer_3/` folder has no `tokenizer.json`.
//!
//! The file is untrusted input: its size, the number of pieces and each piece's length are checked against
//! [`sd_core::limits`] before memory is spent, every length prefix against the bytes that remain, and the charsmap's
//! double-array trie and its offsets into the normalised strings are validated before the `tokenizers` crate (which
//! indexes them without checks) sees them. Nothing recurses on the input: the nesting is the proto's fixed two levels.

use anyhow::{anyhow, bail, ensure, Context, Result};
use sd_core::limits::{exceeded, SPIECE_MAX_BYTES, SPIECE_MAX_PIECES, SPIECE_MAX_PIECE_BYTES};
use std::path::Path;

/// `SentencePiece.Type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Result<Self> {
        Ok(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => bail!("piece type {v} is not one SentencePiece defines (1 to 6)"),
        })
    }
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// What sd-rs reads of a `spiece.model`.
#[derive(Clone, Debug, Default)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 Unigram (the default), 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `NormalizerSpec.precompiled_charsmap`, validated; empty for the identity normalisation.
    pub precompiled_charsmap: Vec<u8>,
}

/// One protobuf value.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A protobuf message's fields, read in order without allocating.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, pos: 0, message }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or_else(|| anyhow!("{}: truncated varint", self.message))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("{}: a varint longer than 10 bytes", self.message)
    }

    fn take(&mut self, n: u64, field: u64) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        ensure!(
            n <= left as u64,
            "{}: field {field} claims {n} bytes but only {left} remain (truncated or corrupt file)",
            self.message
        );
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    /// The next (field number, value), `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        ensure!(field > 0, "{}: field number 0", self.message);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8, field)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n, field)?)
            }
            5 => {
                let b = self.take(4, field)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => bail!("{}: field {field} has wire type {w}, which SentencePiece models never use", self.message),
        };
        Ok(Some((field, value)))
    }
}

fn bytes<'a>(v: Value<'a>, what: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => bail!("{what} must be length-delimited"),
    }
}

fn varint(v: Value<'_>, what: &str) -> Result<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => bail!("{what} must be a varint"),
    }
}

impl SentencePieceModel {
    /// Read `path` (at most [`SPIECE_MAX_BYTES`]).
    pub fn load(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        ensure!(
            len <= SPIECE_MAX_BYTES,
            exceeded(format!("{} ({len} bytes)", path.display()), "spiece.model size", SPIECE_MAX_BYTES, "bytes")
        );
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data).context("not a valid SentencePiece model")
    }

    /// Parse a `ModelProto`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        ensure!(
            data.len() as u64 <= SPIECE_MAX_BYTES,
            exceeded("the model", "spiece.model size", SPIECE_MAX_BYTES, "bytes")
        );
        let mut model = Self { model_type: 1, ..Default::default() };
        let mut fields = Fields::new(data, "ModelProto");
        while let Some((field, value)) = fields.next()? {
            match field {
                1 => {
                    ensure!(
                        model.pieces.len() < SPIECE_MAX_PIECES,
                        exceeded("the vocabulary", "spiece.model pieces", SPIECE_MAX_PIECES as u64, "pieces")
                    );
                    let index = model.pieces.len();
                    let piece =
                        read_piece(bytes(value, "ModelProto.pieces")?).with_context(|| format!("piece {index}"))?;
                    model.pieces.push(piece);
                }
                2 => model.model_type = read_trainer_spec(bytes(value, "ModelProto.trainer_spec")?)?,
                3 => model.precompiled_charsmap = read_normalizer_spec(bytes(value, "ModelProto.normalizer_spec")?)?,
                _ => {} // self-test data, the denormaliser: not used
            }
        }
        ensure!(!model.pieces.is_empty(), "the model has no pieces (is this a SentencePiece model?)");
        ensure!(
            model.model_type == 1,
            "the model type is {} ({}); T5 tokenizers are Unigram (1)",
            model.model_type,
            match model.model_type {
                2 => "BPE",
                3 => "word",
                4 => "char",
                _ => "unknown",
            }
        );
        validate_charsmap(&model.precompiled_charsmap)?;
        Ok(model)
    }
}

fn read_piece(buf: &[u8]) -> Result<Piece> {
    let mut piece = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    let mut fields = Fields::new(buf, "SentencePiece");
    let mut text = None;
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => {
                let b = bytes(value, "SentencePiece.piece")?;
                ensure!(
                    b.len() <= SPIECE_MAX_PIECE_BYTES,
                    exceeded(
                        format!("a piece of {} bytes", b.len()),
                        "spiece.model piece",
                        SPIECE_MAX_PIECE_BYTES as u64,
                        "bytes"
                    )
                );
                text = Some(std::str::from_utf8(b).context("the piece is not UTF-8")?.to_string());
            }
            2 => match value {
                Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                _ => bail!("SentencePiece.score must be a 32-bit float"),
            },
            3 => piece.kind = PieceType::from_proto(varint(value, "SentencePiece.type")?)?,
            _ => {}
        }
    }
    piece.piece = text.filter(|t| !t.is_empty()).context("the piece has no text")?;
    ensure!(piece.score.is_finite(), "the piece {:?} has the score {}", piece.piece, piece.score);
    Ok(piece)
}

/// `TrainerSpec.model_type` (field 3; Unigram when absent).
fn read_trainer_spec(buf: &[u8]) -> Result<u64> {
    let mut model_type = 1;
    let mut fields = Fields::new(buf, "TrainerSpec");
    while let Some((field, value)) = fields.next()? {
        if field == 3 {
            model_type = varint(value, "TrainerSpec.model_type")?;
        }
    }
    Ok(model_type)
}

/// `NormalizerSpec.precompiled_charsmap` (field 2).
fn read_normalizer_spec(buf: &[u8]) -> Result<Vec<u8>> {
    let mut charsmap = Vec::new();
    let mut fields = Fields::new(buf, "NormalizerSpec");
    while let Some((field, value)) = fields.next()? {
        if field == 2 {
            charsmap = bytes(value, "NormalizerSpec.precompiled_charsmap")?.to_vec();
        }
    }
    Ok(charsmap)
}

/// A precompiled charsmap is a little-endian `u32` byte size of a darts-clone double array, the array's `u32`
/// units, then NUL-separated UTF-8 replacement strings. The normaliser walks the trie from the root by XOR-ing each
/// input byte (1 to 255) and each matched unit's offset into its position, and reads a leaf's value as an index into
/// the strings, all without bounds checks. Every position reachable that way is visited once here (at most one
/// per unit, each with 255 bytes to try: ~10 M steps for T5's array): each must lie inside the array (whose length
/// is a whole number of 256-unit blocks, so any byte XOR-ed in stays inside too), and each leaf's value must start
/// a character of the strings. Units no walk can reach (a real array has thousands, holding leftovers) are not read.
fn validate_charsmap(map: &[u8]) -> Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    let bad = |why: String| anyhow!("the normaliser's precompiled charsmap is corrupt: {why}");
    let head: [u8; 4] =
        map.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("shorter than 4 bytes".into()))?;
    let trie_bytes = u32::from_le_bytes(head) as usize;
    let rest = &map[4..];
    if trie_bytes > rest.len() || !trie_bytes.is_multiple_of(4) || trie_bytes == 0 {
        return Err(bad(format!("a trie of {trie_bytes} bytes in {} bytes", rest.len())));
    }
    let units: Vec<usize> =
        rest[..trie_bytes].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let n = units.len();
    if !n.is_multiple_of(256) {
        return Err(bad(format!("{n} trie units, not whole 256-unit blocks")));
    }
    let strings = std::str::from_utf8(&rest[trie_bytes..]).map_err(|_| bad("the replacements are not UTF-8".into()))?;
    // the `spm_precompiled` crate's unit layout: offset, leaf flag, label
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let inside = |from: usize, to: usize| {
        if to < n {
            Ok(to)
        } else {
            Err(bad(format!("unit {from} points to {to}, past the {n} units")))
        }
    };
    let root = inside(0, offset(units[0]))?;
    let mut seen = vec![false; n];
    seen[root] = true;
    let mut todo = vec![root];
    while let Some(state) = todo.pop() {
        for byte in 1..=255usize {
            let i = state ^ byte;
            let u = units[i];
            if u & ((1 << 31) | 0xFF) != byte {
                continue;
            }
            let next = inside(i, i ^ offset(u))?;
            if (u >> 8) & 1 == 1 {
                let value = units[next] & ((1 << 31) - 1);
                if value > strings.len() || !strings.is_char_boundary(value) {
                    return Err(bad(format!(
                        "leaf {next} points inside or past the {} bytes of replacements",
                        strings.len()
                    )));
                }
            }
            if !seen[next] {
                seen[next] = true;
                todo.push(next);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = vec![0x0a];
        varint(text.len() as u64, &mut p);
        p.extend(text.as_bytes());
        p.push(0x15);
        p.extend(score.to_le_bytes());
        p.push(0x18);
        varint(kind, &mut p);
        let mut m = vec![0x0a];
        varint(p.len() as u64, &mut m);
        m.extend(p);
        m
    }

    #[test]
    fn reads_pieces_and_refuses_lies() {
        let mut data = [piece("<pad>", 0.0, 3), piece("</s>", 0.0, 3), piece("▁a", -1.5, 1)].concat();
        let m = SentencePieceModel::parse(&data).unwrap();
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.pieces[2], Piece { piece: "▁a".into(), score: -1.5, kind: PieceType::Normal });
        assert_eq!(m.model_type, 1);
        // BPE trainer spec
        let bpe = [data.clone(), vec![0x12, 0x02, 0x18, 0x02]].concat();
        assert!(format!("{:#}", SentencePieceModel::parse(&bpe).unwrap_err()).contains("BPE"));
        // a length past the end
        data.extend([0x0a, 0x7f, 0x0a]);
        assert!(format!("{:#}", SentencePieceModel::parse(&data).unwrap_err()).contains("only 1 remain"));
        let nan = piece("x", f32::NAN, 1);
        assert!(SentencePieceModel::parse(&nan).is_err());
        assert!(SentencePieceModel::parse(&[]).is_err());
        assert!(SentencePieceModel::parse(&[0x08; 12]).is_err());
    }

    #[test]
    fn charsmap_checks() {
        assert!(validate_charsmap(&[]).is_ok());
        assert!(validate_charsmap(&[1, 2]).is_err());
        let map = |units: &[u32], strings: &[u8]| {
            let mut m = ((units.len() * 4) as u32).to_le_bytes().to_vec();
            m.extend(units.iter().flat_map(|u| u.to_le_bytes()));
            m.extend(strings);
            m
        };
        // 256 zero units and no strings: valid (nothing maps)
        let mut units = vec![0u32; 256];
        assert!(validate_charsmap(&map(&units, b"")).is_ok());
        // the root's offset leaves the array
        units[0] = 1 << 20;
        assert!(format!("{:#}", validate_charsmap(&map(&units, b"")).unwrap_err()).contains("past the 256 units"));
        // byte 'a' matches at unit 0x61 with a leaf whose value (the unit at 0x61 ^ 0, itself) is past the strings
        units[0] = 0;
        units[0x61] = 0x61 | 1 << 8;
        assert!(format!("{:#}", validate_charsmap(&map(&units, b"x")).unwrap_err()).contains("inside or past"));
        // an unreachable unit may hold anything
        units[0x61] = 0;
        units[200] = u32::MAX;
        assert!(validate_charsmap(&map(&units, b"")).is_ok());
        // a trie size past the end
        let mut long = map(&units, b"");
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(validate_charsmap(&long).is_err());
    }
}
