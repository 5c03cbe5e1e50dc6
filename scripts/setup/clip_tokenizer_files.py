"""Write a CLIPTokenizer's vocab.json and merges.txt from OpenAI's `bpe_simple_vocab_16e6.txt.gz`, exactly as the
Hugging Face `openai/clip-vit-*` repos hold them (49 408 tokens: 256 byte units, the same with `</w>`, 48 894 merges,
start and end tokens). `cargo xtask setup` runs this for `models/sd-tiny-shapes/tokenizer`, so the vocabulary
(a third-party file) is derived on each machine instead of being committed; the output is byte-identical to what
`sd_train::demo::scaffold` writes.

usage: python3 clip_tokenizer_files.py BPE_GZ OUT_DIR
"""
import gzip
import json
import os
import sys


def bytes_to_unicode():
    """CLIP's reversible byte -> printable-character table (byte value -> character)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main(bpe, out):
    units = list(bytes_to_unicode().values())
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    os.makedirs(out, exist_ok=True)
    for name, text in [
        ("vocab.json", json.dumps(dict(sorted(ids.items())), ensure_ascii=False, separators=(",", ":"))),
        ("merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)),
    ]:
        tmp = os.path.join(out, f".{name}.partial")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
