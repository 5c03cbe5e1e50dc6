//! Parsed prompt runs → 77-token chunks, following A1111's `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`
//! (`modules/sd_hijack_clip.py`).
//!
//! Each run is tokenized on its own (so weights never straddle a token), tokens fill chunks of 75, and a chunk
//! is closed early at the last comma when that comma is at most [`COMMA_PADDING_BACKTRACK`] tokens back, so a
//! phrase is not cut in half. `BREAK` closes the current chunk. Every chunk is then framed with the start and
//! end tokens and padded with the end token; the end-token → pad-token rewrite for SD2-style tokenizers happens
//! at encoding time ([`pad_after_end`]), as in A1111's `process_tokens`.

use anyhow::{bail, Result};

/// Tokens of prompt text per chunk (77 with the start and end tokens).
pub const CHUNK_LENGTH: usize = 75;
/// A1111's `comma_padding_backtrack` default.
pub const COMMA_PADDING_BACKTRACK: usize = 20;

/// Where a textual-inversion embedding's vectors go: `offset` counts prompt tokens (the start token excluded,
/// as in A1111), `embedding` indexes the caller's embedding list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkFix {
    pub offset: usize,
    pub embedding: usize,
}

/// One chunk: 77 token ids and multipliers once [`tokenize_line`] has closed it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptChunk {
    pub tokens: Vec<u32>,
    pub multipliers: Vec<f32>,
    pub fixes: Vec<ChunkFix>,
}

/// The ids chunking needs from a tokenizer.
#[derive(Clone, Copy, Debug)]
pub struct ChunkIds {
    pub bos: u32,
    pub eos: u32,
    /// `,</w>`; `None` disables comma back-tracking.
    pub comma: Option<u32>,
}

/// An embedding found in a token list: its index, how many vectors it has, how many prompt tokens its name took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingMatch {
    pub embedding: usize,
    pub vectors: usize,
    pub name_tokens: usize,
}

/// Looks up an embedding whose name's tokens start at `tokens[position]` (longest name first).
pub trait EmbeddingFinder {
    fn find(&self, tokens: &[u32], position: usize) -> Option<EmbeddingMatch>;
}

/// No textual-inversion embeddings.
pub struct NoEmbeddings;

impl EmbeddingFinder for NoEmbeddings {
    fn find(&self, _: &[u32], _: usize) -> Option<EmbeddingMatch> {
        None
    }
}

/// `runs` are (text, weight) pairs as [`super::parser::parse_prompt_attention_f64`] gives them (or the whole line
/// with weight 1 when emphasis is off). Returns the chunks and A1111's token count (75 per full chunk plus the
/// tokens of the last one).
pub fn tokenize_line(
    runs: &[(String, f64)],
    tokenize: &mut dyn FnMut(&str) -> Result<Vec<u32>>,
    ids: ChunkIds,
    embeddings: &dyn EmbeddingFinder,
) -> Result<(Vec<PromptChunk>, usize)> {
    let mut state =
        Chunker { ids, chunks: Vec::new(), chunk: PromptChunk::default(), token_count: 0, last_comma: None };
    for (text, weight) in runs {
        if text == "BREAK" && *weight == super::parser::BREAK_WEIGHT {
            state.next_chunk(false);
            continue;
        }
        // A1111 turns the Python float into a float32 tensor before multiplying.
        let weight = *weight as f32;
        let tokens = tokenize(text)?;
        let mut position = 0;
        while position < tokens.len() {
            let token = tokens[position];
            let len = state.chunk.tokens.len();
            if Some(token) == ids.comma {
                state.last_comma = Some(len);
            } else if let Some(comma) =
                state.last_comma.filter(|&c| len == CHUNK_LENGTH && len - c <= COMMA_PADDING_BACKTRACK)
            {
                // Move everything after the comma into the next chunk.
                let moved_tokens = state.chunk.tokens.split_off(comma + 1);
                let moved_mults = state.chunk.multipliers.split_off(comma + 1);
                state.next_chunk(false);
                state.chunk.tokens = moved_tokens;
                state.chunk.multipliers = moved_mults;
            }
            if state.chunk.tokens.len() == CHUNK_LENGTH {
                state.next_chunk(false);
            }
            let Some(found) = embeddings.find(&tokens, position) else {
                state.chunk.tokens.push(token);
                state.chunk.multipliers.push(weight);
                position += 1;
                continue;
            };
            if found.vectors > CHUNK_LENGTH {
                bail!(
                    "a textual-inversion embedding has {} vectors; at most {CHUNK_LENGTH} fit in a prompt chunk",
                    found.vectors
                );
            }
            if state.chunk.tokens.len() + found.vectors > CHUNK_LENGTH {
                state.next_chunk(false);
            }
            state.chunk.fixes.push(ChunkFix { offset: state.chunk.tokens.len(), embedding: found.embedding });
            // Placeholder id 0, as A1111; the vectors replace its token embeddings at encoding time.
            state.chunk.tokens.extend(std::iter::repeat_n(0, found.vectors));
            state.chunk.multipliers.extend(std::iter::repeat_n(weight, found.vectors));
            position += found.name_tokens.max(1);
        }
    }
    if !state.chunk.tokens.is_empty() || state.chunks.is_empty() {
        state.next_chunk(true);
    }
    Ok((state.chunks, state.token_count))
}

struct Chunker {
    ids: ChunkIds,
    chunks: Vec<PromptChunk>,
    chunk: PromptChunk,
    token_count: usize,
    last_comma: Option<usize>,
}

impl Chunker {
    fn next_chunk(&mut self, is_last: bool) {
        let mut chunk = std::mem::take(&mut self.chunk);
        self.token_count += if is_last { chunk.tokens.len() } else { CHUNK_LENGTH };
        let fill = CHUNK_LENGTH.saturating_sub(chunk.tokens.len());
        chunk.tokens.extend(std::iter::repeat_n(self.ids.eos, fill));
        chunk.multipliers.extend(std::iter::repeat_n(1.0, fill));
        chunk.tokens.insert(0, self.ids.bos);
        chunk.tokens.push(self.ids.eos);
        chunk.multipliers.insert(0, 1.0);
        chunk.multipliers.push(1.0);
        self.last_comma = None;
        self.chunks.push(chunk);
    }
}

/// A1111's `process_tokens` padding: everything after the first end token becomes `pad` (a no-op when the
/// tokenizer pads with its end token, as SD1's does).
pub fn pad_after_end(tokens: &[u32], eos: u32, pad: u32) -> Vec<u32> {
    let mut out = tokens.to_vec();
    if eos != pad {
        if let Some(first) = out.iter().position(|&t| t == eos) {
            for t in &mut out[first + 1..] {
                *t = pad;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: ChunkIds = ChunkIds { bos: 100, eos: 101, comma: Some(7) };

    /// Test tokenizer: each whitespace-separated word is its number, `,` is the comma token.
    fn toks(text: &str) -> Result<Vec<u32>> {
        Ok(text
            .replace(',', " , ")
            .split_whitespace()
            .map(|w| if w == "," { 7 } else { w.parse().unwrap_or(1) })
            .collect())
    }

    fn run(runs: &[(&str, f64)]) -> (Vec<PromptChunk>, usize) {
        let runs: Vec<(String, f64)> = runs.iter().map(|(t, w)| (t.to_string(), *w)).collect();
        tokenize_line(&runs, &mut toks, IDS, &NoEmbeddings).unwrap()
    }

    #[test]
    fn short_prompt_is_one_padded_chunk() {
        let (chunks, count) = run(&[("10 11", 1.0), ("12", 1.1)]);
        assert_eq!(count, 3);
        assert_eq!(chunks.len(), 1);
        let c = &chunks[0];
        assert_eq!(c.tokens.len(), 77);
        assert_eq!(&c.tokens[..5], &[100, 10, 11, 12, 101]);
        assert!(c.tokens[4..].iter().all(|&t| t == 101));
        assert_eq!(&c.multipliers[..5], &[1.0, 1.0, 1.0, 1.1f64 as f32, 1.0]);
        let (empty, n) = run(&[("", 1.0)]);
        assert_eq!((empty.len(), n, empty[0].tokens[1]), (1, 0, 101));
    }

    #[test]
    fn comma_backtracking_moves_the_tail() {
        // 70 words, a comma at index 70, then 10 more words: the chunk is full at 75 with the comma 5 back.
        let text = format!(
            "{} , {}",
            (0..70).map(|_| "3").collect::<Vec<_>>().join(" "),
            (0..10).map(|_| "4").collect::<Vec<_>>().join(" ")
        );
        let (chunks, count) = run(&[(&text, 1.0)]);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].tokens[71], 7);
        assert!(chunks[0].tokens[72..].iter().all(|&t| t == 101));
        assert_eq!(&chunks[1].tokens[1..11], &[4; 10]);
        assert_eq!(chunks[1].tokens[11], 101);
        assert_eq!(count, 75 + 10);
    }

    #[test]
    fn far_comma_does_not_backtrack_and_break_splits() {
        let text = format!("3 , {}", (0..80).map(|_| "4").collect::<Vec<_>>().join(" "));
        let (chunks, _) = run(&[(&text, 1.0)]);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].tokens[75], 4);
        let (chunks, count) = run(&[("5", 1.0), ("BREAK", -1.0), ("6", 1.0)]);
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].tokens[1], chunks[1].tokens[1], count), (5, 6, 76));
        // A BREAK with a multiplied weight is ordinary text.
        let (chunks, _) = run(&[("BREAK", -1.1)]);
        assert_eq!((chunks.len(), chunks[0].multipliers[1]), (1, -1.1f64 as f32));
    }

    #[test]
    fn sd2_padding_rewrites_after_first_end() {
        let (chunks, _) = run(&[("10", 1.0)]);
        let padded = pad_after_end(&chunks[0].tokens, 101, 0);
        assert_eq!(&padded[..4], &[100, 10, 101, 0]);
        assert!(padded[3..].iter().all(|&t| t == 0));
        assert_eq!(pad_after_end(&chunks[0].tokens, 101, 101), chunks[0].tokens);
    }

    struct OneEmbedding;
    impl EmbeddingFinder for OneEmbedding {
        fn find(&self, tokens: &[u32], position: usize) -> Option<EmbeddingMatch> {
            (tokens[position..].starts_with(&[50, 51])).then_some(EmbeddingMatch {
                embedding: 0,
                vectors: 3,
                name_tokens: 2,
            })
        }
    }

    #[test]
    fn embeddings_take_placeholder_slots() {
        let runs = vec![("10 50 51 11".to_string(), 1.2)];
        let (chunks, _) = tokenize_line(&runs, &mut toks, IDS, &OneEmbedding).unwrap();
        let c = &chunks[0];
        assert_eq!(&c.tokens[..7], &[100, 10, 0, 0, 0, 11, 101]);
        assert_eq!(c.fixes, vec![ChunkFix { offset: 1, embedding: 0 }]);
        assert_eq!(c.multipliers[3], 1.2f64 as f32);
    }
}
