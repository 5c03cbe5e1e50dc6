//! Every bound sd-rs puts on what it reads, in one place.
//!
//! Input from files, flags and HTTP requests decides how much memory and time a reader spends. Each size, depth
//! or count that comes from input is checked against one of these constants *before* the memory it implies is
//! allocated, so a hostile or corrupt file costs bounded work and ends in an error naming the bound. Each default
//! is far above anything an honest input reaches (the reason says why); the ones an operator may raise are flags
//! of `sd` or `sd serve` whose defaults are these constants ([`ALL`] says which).
//!
//! The README's "Limits" section lists the same table; a test keeps the two in step.

/// One named bound: what it limits, its default, why, and how to raise it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Short name used in error messages and the README (`pickle depth`).
    pub name: &'static str,
    pub default: u64,
    pub unit: &'static str,
    /// Why the bound exists and why honest input stays below it.
    pub reason: &'static str,
    /// The flag that raises it, or `None` when it is fixed (raising it would only help an attacker).
    pub flag: Option<&'static str>,
}

const MIB: u64 = 1024 * 1024;

// --- Pickle (`.ckpt`, `.pt`, `.bin`) -------------------------------------------------------------------------

/// Containers nested inside containers. A state dict nests about 4 deep (dict → tensor args tuple → size tuple);
/// a few hundred thousand levels is a stack-overflow attack on any recursive consumer.
pub const PICKLE_MAX_DEPTH: usize = 100;
/// Values on the pickle machine's stack at once. torch batches SETITEMS by 1000, so a real stack stays small.
pub const PICKLE_MAX_STACK: usize = 1_000_000;
/// Memo entries. A state dict uses a handful per tensor (~20k for SDXL with EMA weights).
pub const PICKLE_MAX_MEMO: usize = 2_000_000;
/// Values built in total, copies out of the memo included (a "billion laughs" pickle builds few opcodes into a
/// huge tree). An SDXL checkpoint builds ~100k; 20M values is about 1 GB of memory.
pub const PICKLE_MAX_VALUES: usize = 20_000_000;

// --- Zip (torch.save archives) ---------------------------------------------------------------------------------

/// Members of one zip archive: torch writes one per storage (~2k for SDXL with EMA weights) plus 3.
pub const ZIP_MAX_MEMBERS: u64 = 200_000;
/// Inflated bytes of a `data.pkl`: ~300 KB for SDXL; anything larger is a zip bomb or not a checkpoint.
pub const ZIP_MAX_PICKLE_BYTES: u64 = 64 * MIB;
/// Inflated size ÷ compressed size of a member. torch stores members uncompressed (ratio 1); deflated float
/// weights shrink by ~10%; a zip bomb reaches 1000.
pub const ZIP_MAX_INFLATION_RATIO: u64 = 100;
/// Members at most this big are exempt from the ratio check (a small `data.pkl` of repeated names deflates well).
pub const ZIP_RATIO_EXEMPT_BYTES: u64 = 4 * MIB;

/// Bytes of one textual-inversion embedding's storage: a 75-vector SDXL embedding is 600 KB.
pub const EMBEDDING_MAX_BYTES: u64 = 64 * MIB;

/// A block number read from a checkpoint key (`input_blocks.N`, `zero_convs.N`, `down_blocks.N`, ...). Real models
/// stop below 30 (SDXL's `input_blocks.8`, SD1's `zero_convs.12`, the hint block's `input_hint_block.14`); the
/// number decides how many blocks a config gets, so a key naming block 10⁹ must not become a billion-entry list.
pub const CHECKPOINT_MAX_BLOCK_INDEX: u64 = 1000;

// --- safetensors -------------------------------------------------------------------------------------------------

/// Bytes of a safetensors JSON header: SDXL's is ~200 KB (the format's own reader stops at 100 MB).
pub const SAFETENSORS_MAX_HEADER_BYTES: u64 = 100_000_000;
/// Tensors in one weights file or set of shards (SDXL's UNet has ~1700).
pub const SAFETENSORS_MAX_TENSORS: u64 = 1_000_000;

// --- Images ------------------------------------------------------------------------------------------------------

/// Width or height of an image read from disk, checked from its header before decoding.
pub const IMAGE_MAX_SIDE: u64 = 16_384;
/// Width × height of an uploaded or init image, checked from its header before decoding (4096² = 64 MB as RGBA).
pub const INPUT_MAX_PIXELS: u64 = 4096 * 4096;
/// Bytes one image decoder may allocate.
pub const IMAGE_MAX_ALLOC_BYTES: u64 = 2048 * MIB;
/// Width or height of a generated image on the command line (multiple of 8).
pub const GENERATE_MAX_SIDE: u64 = 8192;
/// Width × height of a generated image over HTTP (`sd serve --max-pixels`).
pub const SERVE_MAX_PIXELS: u64 = 2048 * 2048;

// --- Requests ----------------------------------------------------------------------------------------------------

/// Characters in a prompt or negative prompt (77-token chunks: 20k characters is ~60 chunks).
pub const PROMPT_MAX_CHARS: u64 = 20_000;
/// Brackets nested in brackets in a prompt's editing syntax (`[a:[b:c:2]:5]` is 2 levels); the parser recurses.
pub const PROMPT_MAX_NESTING: usize = 64;
/// `AND` parts of a prompt: each costs one more UNet batch row at every step.
pub const PROMPT_MAX_AND_PARTS: usize = 16;
/// Distinct texts a prompt's schedules need encoded (alternation at 1000 steps can ask for 1000).
pub const PROMPT_MAX_TEXTS: usize = 256;
/// Sampler steps on the command line.
pub const GENERATE_MAX_STEPS: u64 = 1000;
/// Sampler steps per HTTP request (`sd serve --max-steps`).
pub const SERVE_MAX_STEPS: u64 = 150;
/// Images drawn together on the command line (`--batch-size`).
pub const GENERATE_MAX_BATCH: u64 = 64;
/// Batches run one after the other on the command line (`--batch-count`).
pub const GENERATE_MAX_BATCH_COUNT: u64 = 100_000;
/// Images drawn together per HTTP request (`sd serve --max-batch`).
pub const SERVE_MAX_BATCH: u64 = 8;
/// Batches one after the other per HTTP request (`n_iter`).
pub const SERVE_MAX_N_ITER: u64 = 16;
/// LibTorch intra-op threads (`--threads`): each costs a stack; 100000 overflowed it.
pub const MAX_THREADS: u64 = 1024;
/// Bytes of one HTTP request body (`sd serve --max-body-mb`).
pub const SERVE_MAX_BODY_BYTES: u64 = 48 * MIB;
/// Jobs waiting behind the running one (`sd serve --max-queue`).
pub const SERVE_MAX_QUEUE: u64 = 32;
/// Finished jobs kept readable.
pub const SERVE_MAX_FINISHED_JOBS: u64 = 256;

// --- Training data: opt-out signals ------------------------------------------------------------------------------

/// Bytes of one XMP packet read for opt-out signals. Real packets are a few KB (a JPEG's standard XMP segment holds
/// at most 64 KB); a packet of megabytes is padding or an attack on the XML parser.
pub const XMP_MAX_BYTES: u64 = 4 * MIB;
/// Element nesting of an XMP packet: real packets nest ~6 deep (x:xmpmeta → rdf:RDF → rdf:Description → property
/// → rdf:Alt → rdf:li).
pub const XMP_MAX_DEPTH: u64 = 64;
/// Chunks (PNG, WebP) or marker segments (JPEG) of one image walked for metadata: encoders write tens, a few
/// hundred with many small IDATs.
pub const IMAGE_MAX_CHUNKS: u64 = 100_000;
/// Bytes of a dataset's `tdmrep.json` or a `--opt-out-list` file (a million SHA-256 lines is 65 MB).
pub const OPT_OUT_FILE_MAX_BYTES: u64 = 128 * MIB;

/// Image-prompt tokens one IP-Adapter may add to every cross-attention layer: base adapters make 4, "plus" 16,
/// "full-face" 257 (each costs attention memory at every layer and step).
pub const IP_ADAPTER_MAX_TOKENS: u64 = 4096;
/// IP-Adapters one generation may use (each is an extra attention per cross-attention layer and step).
pub const IP_ADAPTER_MAX_ADAPTERS: u64 = 8;

// --- SentencePiece (`tokenizer_3/spiece.model`) -------------------------------------------------------------------

/// Bytes of a `spiece.model`: T5's is 792 KB (most of it the normaliser's charsmap), mT5's 4.3 MB.
pub const SPIECE_MAX_BYTES: u64 = 64 * MIB;
/// Pieces in a `spiece.model`: T5 has 32,000, mT5 250,100.
pub const SPIECE_MAX_PIECES: usize = 1_000_000;
/// Bytes of one piece: SentencePiece's trainer stops at 16 characters (64 bytes of UTF-8) by default.
pub const SPIECE_MAX_PIECE_BYTES: usize = 4096;

/// Every bound above, for the README and `--help` texts.
#[rustfmt::skip]
pub const ALL: &[Limit] = &[
    Limit { name: "pickle depth", default: PICKLE_MAX_DEPTH as u64, unit: "levels", reason: "containers nested in containers; a state dict nests ~4 deep", flag: None },
    Limit { name: "pickle stack", default: PICKLE_MAX_STACK as u64, unit: "values", reason: "torch batches items by 1000", flag: None },
    Limit { name: "pickle memo", default: PICKLE_MAX_MEMO as u64, unit: "entries", reason: "a few per tensor", flag: None },
    Limit { name: "pickle values", default: PICKLE_MAX_VALUES as u64, unit: "values", reason: "memo copies included (\"billion laughs\"); ~1 GB", flag: None },
    Limit { name: "zip members", default: ZIP_MAX_MEMBERS, unit: "members", reason: "one per storage in torch.save archives", flag: None },
    Limit { name: "zip data.pkl size", default: ZIP_MAX_PICKLE_BYTES, unit: "bytes", reason: "~300 KB for SDXL; inflated through a bounded reader", flag: None },
    Limit { name: "zip inflation ratio", default: ZIP_MAX_INFLATION_RATIO, unit: "×", reason: "torch stores members uncompressed; bombs reach 1000×", flag: None },
    Limit { name: "embedding size", default: EMBEDDING_MAX_BYTES, unit: "bytes", reason: "a 75-vector SDXL embedding is 600 KB", flag: None },
    Limit { name: "checkpoint block index", default: CHECKPOINT_MAX_BLOCK_INDEX, unit: "index", reason: "block numbers in key names; real models stay below 30", flag: None },
    Limit { name: "safetensors header", default: SAFETENSORS_MAX_HEADER_BYTES, unit: "bytes", reason: "SDXL's is ~200 KB", flag: None },
    Limit { name: "safetensors tensors", default: SAFETENSORS_MAX_TENSORS, unit: "tensors", reason: "SDXL's UNet has ~1700", flag: None },
    Limit { name: "image side", default: IMAGE_MAX_SIDE, unit: "pixels", reason: "read from the header before decoding", flag: None },
    Limit { name: "input image pixels", default: INPUT_MAX_PIXELS, unit: "pixels", reason: "init images and uploads, from the header", flag: Some("sd serve --max-input-pixels") },
    Limit { name: "image decoder memory", default: IMAGE_MAX_ALLOC_BYTES, unit: "bytes", reason: "one decode", flag: None },
    Limit { name: "generate side", default: GENERATE_MAX_SIDE, unit: "pixels", reason: "--width/--height", flag: None },
    Limit { name: "serve pixels", default: SERVE_MAX_PIXELS, unit: "pixels", reason: "width × height per request", flag: Some("sd serve --max-pixels") },
    Limit { name: "prompt length", default: PROMPT_MAX_CHARS, unit: "characters", reason: "~60 chunks of 77 tokens", flag: None },
    Limit { name: "prompt nesting", default: PROMPT_MAX_NESTING as u64, unit: "levels", reason: "[from:to:when] / [a|b] groups inside groups", flag: None },
    Limit { name: "prompt AND parts", default: PROMPT_MAX_AND_PARTS as u64, unit: "parts", reason: "one UNet batch row per part and step", flag: None },
    Limit { name: "prompt texts", default: PROMPT_MAX_TEXTS as u64, unit: "texts", reason: "distinct texts the schedules encode", flag: None },
    Limit { name: "generate steps", default: GENERATE_MAX_STEPS, unit: "steps", reason: "--steps", flag: None },
    Limit { name: "serve steps", default: SERVE_MAX_STEPS, unit: "steps", reason: "per request", flag: Some("sd serve --max-steps") },
    Limit { name: "generate batch size", default: GENERATE_MAX_BATCH, unit: "images", reason: "--batch-size", flag: None },
    Limit { name: "generate batch count", default: GENERATE_MAX_BATCH_COUNT, unit: "batches", reason: "--batch-count", flag: None },
    Limit { name: "serve batch size", default: SERVE_MAX_BATCH, unit: "images", reason: "batch_size, OpenAI n", flag: Some("sd serve --max-batch") },
    Limit { name: "serve n_iter", default: SERVE_MAX_N_ITER, unit: "batches", reason: "per request", flag: None },
    Limit { name: "threads", default: MAX_THREADS, unit: "threads", reason: "--threads; each thread costs a stack", flag: None },
    Limit { name: "HTTP body", default: SERVE_MAX_BODY_BYTES, unit: "bytes", reason: "JSON with base64 images", flag: Some("sd serve --max-body-mb") },
    Limit { name: "queue", default: SERVE_MAX_QUEUE, unit: "jobs", reason: "more get 429 with Retry-After", flag: Some("sd serve --max-queue") },
    Limit { name: "XMP packet", default: XMP_MAX_BYTES, unit: "bytes", reason: "opt-out signals in training images; real packets are a few KB", flag: None },
    Limit { name: "XMP depth", default: XMP_MAX_DEPTH, unit: "levels", reason: "real packets nest ~6 deep", flag: None },
    Limit { name: "image chunks", default: IMAGE_MAX_CHUNKS, unit: "chunks", reason: "PNG/WebP chunks, JPEG segments walked for metadata", flag: None },
    Limit { name: "opt-out file", default: OPT_OUT_FILE_MAX_BYTES, unit: "bytes", reason: "tdmrep.json, --opt-out-list", flag: None },
    Limit { name: "IP-Adapter tokens", default: IP_ADAPTER_MAX_TOKENS, unit: "tokens", reason: "per adapter and picture; full-face makes 257", flag: None },
    Limit { name: "IP-Adapters", default: IP_ADAPTER_MAX_ADAPTERS, unit: "adapters", reason: "per generation; each adds an attention per layer and step", flag: None },
    Limit { name: "spiece.model size", default: SPIECE_MAX_BYTES, unit: "bytes", reason: "T5's is 792 KB", flag: None },
    Limit { name: "spiece.model pieces", default: SPIECE_MAX_PIECES as u64, unit: "pieces", reason: "T5 has 32,000, mT5 250,100", flag: None },
    Limit { name: "spiece.model piece", default: SPIECE_MAX_PIECE_BYTES as u64, unit: "bytes", reason: "pieces are at most 16 characters by default", flag: None },
    Limit { name: "finished jobs", default: SERVE_MAX_FINISHED_JOBS, unit: "jobs", reason: "oldest forgotten first", flag: None },
];

/// The error text for input over a bound: `"<what> exceeds the <name> limit of <default> <unit>"`.
pub fn exceeded(what: impl std::fmt::Display, name: &str, limit: u64, unit: &str) -> String {
    format!("{what} exceeds the {name} limit of {limit} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_positive() {
        let mut names: Vec<_> = ALL.iter().map(|l| l.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.iter().all(|l| l.default > 0));
    }

    /// The README's table is the user's view of [`ALL`]: every limit appears with its default.
    #[test]
    fn readme_lists_every_limit() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## Limits").expect("README has a `## Limits` section");
        let section = &readme[start..];
        for l in ALL {
            let row = section.lines().find(|r| r.starts_with(&format!("| {} |", l.name)));
            let row = row.unwrap_or_else(|| panic!("README's Limits table lacks `{}`", l.name));
            assert!(
                row.contains(&format!("| {} |", l.default)),
                "README row for `{}` lacks {}: {row}",
                l.name,
                l.default
            );
        }
    }
}
