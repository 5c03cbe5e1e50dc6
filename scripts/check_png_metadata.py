"""Reads PNGs written by sd-rs (e.g. `cargo run -p sd-provenance --example labelled_png -- /tmp/lbl`) with independent
readers — Pillow (`info`, `getxmp()`) and exiftool when installed — and checks the labels are there and decode.

usage: python scripts/check_png_metadata.py FILE.png...   (exit status 1 on any failure)
"""
import json
import shutil
import subprocess
import sys

from PIL import Image

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def find(d, key):
    """First value for `key` anywhere in Pillow's nested getxmp() dict."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key:
                return v
            r = find(v, key)
            if r is not None:
                return r
    elif isinstance(d, list):
        for v in d:
            r = find(v, key)
            if r is not None:
                return r
    return None


def check(path):
    ok = True
    im = Image.open(path)
    params = im.info.get("parameters")
    print(f"{path}:")
    print(f"  Pillow parameters: {params!r}")
    ok &= params is not None and "Negative prompt:" in params and "Steps: " in params
    aigc = json.loads(im.info["AIGC"])
    print(f"  Pillow AIGC: {aigc}")
    ok &= aigc["Label"] == "1" and len(aigc["ProduceID"]) == 36
    xmp = im.getxmp()
    dst = find(xmp, "DigitalSourceType")
    tool = find(xmp, "CreatorTool")
    xaigc = find(xmp, "AIGC")
    print(f"  Pillow getxmp DigitalSourceType={dst!r} CreatorTool={tool!r} AIGC={xaigc!r}")
    ok &= isinstance(dst, str) and dst.startswith(TRAINED) and json.loads(xaigc) == aigc
    if shutil.which("exiftool"):
        out = subprocess.run(["exiftool", "-j", "-G1", "-a", path], capture_output=True, text=True, check=True)
        tags = json.loads(out.stdout)[0]
        keep = {k: v for k, v in tags.items() if any(s in k for s in ("DigitalSourceType", "CreatorTool", "Parameters", "AIGC", "Watermark"))}
        print(f"  exiftool: {json.dumps(keep, ensure_ascii=False)}")
        ok &= keep.get("XMP-iptcExt:DigitalSourceType") == dst
        ok &= keep.get("PNG:Parameters") == params
    else:
        print("  exiftool: not installed, skipped")
    print("  OK" if ok else "  FAILED")
    return ok


if __name__ == "__main__":
    results = [check(p) for p in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
