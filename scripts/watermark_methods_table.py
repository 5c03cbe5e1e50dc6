"""Robustness of both watermark methods (dwtDct, dwtDctSvd) on the set-up's public-domain photo
(.sd-data/astronaut.png, 512x512, scikit-image / NASA), decoded two ways: by the PyPI invisible-watermark 0.2.0
decoder and by `sd inspect --json` (whose JPEG decoder is the `image` crate's, not libjpeg).

The mark (payload StableDiffusionV1, 136 bits) is embedded with the reference encoder, which sd-provenance matches
byte for byte (tests watermark_reference.rs, watermark_svd_reference.rs). JPEG edits are saved as .jpg files by
Pillow (4:2:0 chroma subsampling, Pillow's default) and both decoders read those files; resized and cropped images
are saved as PNG; lossy WebP edits by Pillow's libwebp (the encoder `sd generate -o x.webp` uses, at the same
quality scale). Prints a Markdown table of matched bits out of 136 (chance ≈ 68; "likely" needs ≥ 85).

usage: python scripts/watermark_methods_table.py [path/to/sd]   (default target/debug/sd)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from imwatermark import WatermarkDecoder, WatermarkEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = b"StableDiffusionV1"
WANT = [int(b) for b in np.unpackbits(np.frombuffer(PAYLOAD, np.uint8))]
METHODS = ["dwtDct", "dwtDctSvd"]


def resize(rgb, f, back=False):
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.BICUBIC)
    return small.resize((w, h), Image.BICUBIC) if back else small


def edits(rgb):
    """(label, file suffix, PIL image, save kwargs)"""
    h, w = rgb.shape[:2]
    out = [("none (PNG)", "png", Image.fromarray(rgb), {})]
    for q in [95, 90, 85, 80, 75, 70, 60, 50]:
        out.append((f"JPEG q{q}", "jpg", Image.fromarray(rgb), {"quality": q}))
    for q in [95, 90, 80, 75, 60, 50]:
        out.append((f"WebP q{q}", "webp", Image.fromarray(rgb), {"quality": q}))
    out.append(("resize ½ (256×256, decoded as is)", "png", resize(rgb, 0.5), {}))
    out.append(("resize ½ then back to 512", "png", resize(rgb, 0.5, back=True), {}))
    out.append(("resize ½ then JPEG q75", "jpg", resize(rgb, 0.5), {"quality": 75}))
    out.append(("crop 10 % right/bottom (block grid kept)", "png", Image.fromarray(rgb[: int(h * 0.9), : int(w * 0.9)]), {}))
    out.append(("crop 10 % bottom only (width kept)", "png", Image.fromarray(rgb[: int(h * 0.9)]), {}))
    c0, c1 = int(h * 0.05), int(h * 0.95)
    out.append(("crop 10 % centred (grid shifted)", "png", Image.fromarray(rgb[c0:c1, c0:c1]), {}))
    return out


def ref_bits(path, method):
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if rgb.shape[0] * rgb.shape[1] < 256 * 256:
        return None
    got = WatermarkDecoder("bits", len(WANT)).decode(np.ascontiguousarray(rgb[:, :, ::-1]), method)
    return sum(int(a) == b for a, b in zip(got, WANT))


def main():
    sd = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/sd")
    photo = np.asarray(Image.open(os.path.join(ROOT, ".sd-data/astronaut.png")).convert("RGB"))
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        files = []
        for method in METHODS:
            enc = WatermarkEncoder()
            enc.set_watermark("bytes", PAYLOAD)
            marked = np.ascontiguousarray(enc.encode(np.ascontiguousarray(photo[:, :, ::-1]), method)[:, :, ::-1])
            for k, (label, ext, img, kw) in enumerate(edits(marked)):
                path = os.path.join(d, f"{method}_{k}.{ext}")
                img.save(path, **kw)
                files.append((method, label, path))
        reports = json.loads(subprocess.run([sd, "inspect", "--json"] + [f[2] for f in files], check=True,
                                            capture_output=True, text=True).stdout)
        by_path = {r["path"]: r for r in reports}
        for method, label, path in files:
            det = by_path[path].get("watermark")
            ours = None
            if det is not None:
                ours = next(x["matched_bits"] for x in det if x["method"] == method and x["total_bits"] == 136)
            rows.setdefault(label, {})[method] = (ref_bits(path, method), ours)
    fmt = lambda v: "too small" if v is None else str(v)  # noqa: E731
    print("| edit | dwtDct: reference | dwtDct: sd inspect | dwtDctSvd: reference | dwtDctSvd: sd inspect |")
    print("|---|---|---|---|---|")
    for label, per in rows.items():
        cells = [fmt(v) for m in METHODS for v in per[m]]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
