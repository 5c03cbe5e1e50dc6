"""Measures how much of the invisible watermark (dwtDct) survives common edits, on real photos bundled with
scikit-image. Uses the PyPI invisible-watermark 0.2.0 encoder/decoder, which sd-provenance matches byte for byte on
the uint8 path (crates/sd-provenance/tests/it/watermark_reference.rs), so the numbers hold for sd-rs too.

Prints a Markdown table: mean bit accuracy (matched bits / payload bits) over the images, and how many images
still reach "likely" or better (48 bits: >= 34; 136 bits: >= 85 — see watermark/confidence.rs).

usage: python scripts/watermark_robustness.py
"""
import io
import sys
import types

import numpy as np
from PIL import Image

try:
    import torch  # noqa: F401  (imwatermark imports it at load time without using it)
except ImportError:
    sys.modules["torch"] = types.ModuleType("torch")
from imwatermark import WatermarkDecoder, WatermarkEncoder  # noqa: E402
from skimage import data  # noqa: E402

PAYLOADS = {
    "StableDiffusionV1 (136 bits)": ("bytes", b"StableDiffusionV1", 85),
    "SDXL (48 bits)": ("bits", [int(b) for b in bin(0xB3EC907BB19E)[2:]], 34),
}
IMAGES = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}


def jpeg(rgb, q):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def resize(rgb, f, back=False):
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC) if back else small)


ATTACKS = [
    ("none (PNG)", lambda x: x),
    ("JPEG q90", lambda x: jpeg(x, 90)),
    ("JPEG q75", lambda x: jpeg(x, 75)),
    ("resize 0.5x", lambda x: resize(x, 0.5)),
    ("resize 0.5x then back to 1x", lambda x: resize(x, 0.5, back=True)),
    ("crop 10% (right/bottom, grid kept)", lambda x: x[: int(x.shape[0] * 0.9), : int(x.shape[1] * 0.9)]),
    ("crop 10% (centred, grid shifted)", lambda x: x[int(x.shape[0] * 0.05) : int(x.shape[0] * 0.95), int(x.shape[1] * 0.05) : int(x.shape[1] * 0.95)]),
]


def decode_bits(rgb, n):
    if rgb.shape[0] * rgb.shape[1] < 256 * 256:
        return None  # the decoder refuses images this small
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return [int(b) for b in WatermarkDecoder("bits", n).decode(bgr, "dwtDct")]


def main():
    header = "| edit | " + " | ".join(f"{p}: bit accuracy, images ≥ likely" for p in PAYLOADS) + " |"
    print(f"Images: {', '.join(f'{k} {v().shape[1]}x{v().shape[0]}' for k, v in IMAGES.items())} (scikit-image data)\n")
    print(header)
    print("|" + "---|" * (1 + len(PAYLOADS)))
    marked = {}
    for pname, (kind, content, _) in PAYLOADS.items():
        enc = WatermarkEncoder()
        enc.set_watermark(kind, content)
        marked[pname] = {k: np.ascontiguousarray(enc.encode(np.ascontiguousarray(f()[:, :, ::-1]), "dwtDct")[:, :, ::-1]) for k, f in IMAGES.items()}
    for aname, attack in ATTACKS:
        cells = []
        for pname, (kind, content, likely) in PAYLOADS.items():
            want = [int(b) for b in np.unpackbits(np.frombuffer(content, np.uint8))] if kind == "bytes" else content
            accs, hits, refused = [], 0, 0
            for img in marked[pname].values():
                got = decode_bits(attack(img), len(want))
                if got is None:
                    refused += 1
                    continue
                m = sum(a == b for a, b in zip(got, want))
                accs.append(m / len(want))
                hits += m >= likely
            note = f" ({refused} too small to decode)" if refused else ""
            cells.append(f"{100 * np.mean(accs):.1f} %, {hits}/{len(accs)}{note}")
        print(f"| {aname} | " + " | ".join(cells) + " |")
    # false positives: unmarked originals
    cells = []
    for pname, (kind, content, likely) in PAYLOADS.items():
        want = [int(b) for b in np.unpackbits(np.frombuffer(content, np.uint8))] if kind == "bytes" else content
        accs = [sum(a == b for a, b in zip(decode_bits(f(), len(want)), want)) / len(want) for f in IMAGES.values()]
        cells.append(f"{100 * np.mean(accs):.1f} %, -")
    print("| unmarked original (chance level) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
