"""Reads images with independent readers and prints what they find, one JSON object per file (a JSON array on
stdout), for crates/sd-cli/tests/formats.rs:

  parameters   the A1111 parameters as AUTOMATIC1111's PNG Info gets them: PNG `parameters` text chunk; JPEG/WebP
               Pillow's `info["exif"]` → piexif.load → Exif UserComment → piexif.helper.UserComment.load
  source_type  Iptc4xmpExt:DigitalSourceType from Pillow's getxmp()
  c2pa         with --c2pa: the C2PA SDK's own reader (PyPI c2pa-python): validation_state, failure codes,
               actions, ingredients' titles and relationships. --anchors FILE trusts that PEM root.

usage: python scripts/check_formats_readers.py [--c2pa] [--anchors ROOT.pem] FILE...
"""
import json
import sys

import piexif
import piexif.helper
from PIL import Image


def find(d, key):
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


def parameters(img):
    if img.format == "PNG":
        return img.info.get("parameters")
    exif = img.info.get("exif")
    if not exif:
        return None
    comment = piexif.load(exif).get("Exif", {}).get(piexif.ExifIFD.UserComment)
    return piexif.helper.UserComment.load(comment) if comment else None


def c2pa_report(path, anchors):
    import c2pa

    settings = {"verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}}
    if anchors:
        with open(anchors) as f:
            settings["trust"] = {"trust_anchors": f.read()}
        settings["verify"]["verify_trust"] = True
    ctx = c2pa.Context.from_dict(settings) if hasattr(c2pa, "Context") else None
    try:
        reader = c2pa.Reader(path, context=ctx) if ctx is not None else c2pa.Reader(path)
    except Exception as e:  # noqa: BLE001  (the SDK raises its own error types)
        return {"error": str(e)}
    store = json.loads(reader.json())
    m = store["manifests"][store["active_manifest"]]
    actions = []
    for a in m.get("assertions", []):
        if a["label"].startswith("c2pa.actions"):
            actions += [x["action"] for x in a["data"]["actions"]]
    status = store.get("validation_results", {}).get("activeManifest", {})
    return {
        "state": store.get("validation_state"),
        "failures": [s["code"] for s in status.get("failure", [])],
        "actions": actions,
        "ingredients": [[i.get("title"), i.get("relationship")] for i in m.get("ingredients", [])],
        "signer": m.get("signature_info", {}).get("common_name"),
    }


def main():
    args = sys.argv[1:]
    with_c2pa = "--c2pa" in args
    anchors = None
    if "--anchors" in args:
        anchors = args[args.index("--anchors") + 1]
        del args[args.index("--anchors") : args.index("--anchors") + 2]
    files = [a for a in args if a != "--c2pa"]
    out = []
    for path in files:
        img = Image.open(path)
        row = {"path": path, "format": img.format, "parameters": parameters(img),
               "source_type": find(img.getxmp(), "DigitalSourceType")}
        if with_c2pa:
            row["c2pa"] = c2pa_report(path, anchors)
        out.append(row)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
