"""sd-rs against diffusers on one CUDA GPU, same random full-size weights, same seeds: `cargo xtask gpu-check`.

usage: python gpu_check.py --sd PATH/TO/sd --sd15 DIR [--sdxl DIR] [--steps 20] [--repeats 2] [--images 4]
                           [--quick] [--json FILE]
       python gpu_check.py --sd PATH/TO/sd --sd15 models/sd-tiny-shapes --dry-run   # the script itself, on the CPU

`--dry-run` runs every step on the CPU (f32 in place of f16, the model's own size, 2 steps): it checks that the
script, `sd generate --json` and diffusers_txt2img.py still fit together, without a GPU and without meaning.

What it measures, in one run, each side in its own process and alternated (ours, theirs, ours, ...):
1. Parity in f32: the same prompt, seed and Euler schedule; both sides draw the initial noise from a CPU generator
   (sd-rs always does; diffusers is given `torch.Generator("cpu")`), so the images differ only by GPU kernel
   rounding. Reported: the share of 8-bit channel values within ±1 level (target ≥ 99 %), the largest difference,
   PSNR.
2. Speed in f16: seconds per image after a warm-up image (sd-rs `--batch-count N --json`, diffusers `--images N`),
   the first image of a process (warm-up cost), whole-process wall time for one image (`measure.py`), and peak
   GPU memory (allocator peaks: `max_memory_allocated` / reserved) next to peak RSS.
3. Memory options: peak GPU memory and seconds per image with model and sequential offload on both sides
   (`--offload model|sequential` against `enable_model_cpu_offload` / `enable_sequential_cpu_offload`).
4. Layout: sd-rs channels-last (`--memory-format nhwc`) against NCHW in f16, per image.

It prints markdown tables (the README's GPU table is pasted from them) and writes every number to --json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "a lighthouse at dawn, oil painting"


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p


def line(stderr, prefix):
    for ln in stderr.splitlines():
        if ln.startswith(prefix):
            return json.loads(ln[len(prefix):])
    sys.exit(f"no {prefix.strip()} line in:\n{stderr[-2000:]}")


def measured(cmd):
    """(whole-process wall s, peak RSS MB, the child's stdout, stderr) under measure.py."""
    p = run([sys.executable, os.path.join(HERE, "measure.py"), "--", *cmd])
    m = line(p.stderr, "MEASURE ")
    if m["rc"] != 0:
        sys.exit(f"failed ({m['rc']}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return m["wall_s"], m["peak_rss_mb"], p.stdout, p.stderr


def sd_cmd(a, model, size, dtype, out, extra=()):
    dtype = a.fast_dtype if dtype == "f16" else dtype
    return [a.sd, "generate", "--model", model, PROMPT, "--steps", str(a.steps), "-W", str(size), "-H", str(size),
            "--device", a.device, "--dtype", dtype, "--seed", "0", "--sampler", "euler", "--no-watermark",
            "--safety", "off", "-o", out, "--overwrite", "-q", *extra]


def py_cmd(a, model, size, dtype, out, extra=()):
    dtype = a.fast_dtype if dtype == "f16" else dtype
    return [sys.executable, os.path.join(HERE, "diffusers_txt2img.py"), "--model", model, "--steps", str(a.steps),
            "--size", str(size), "--dtype", dtype, "--seed", "0", "--sampler", "euler", "--device", a.device,
            "--out", out, *extra]


def sd_report(stdout):
    """Per-batch seconds and the GPU peak from `sd generate --json`."""
    v = json.loads(stdout)
    per = [b["timings"]["encode_s"] + b["timings"]["denoise_s"] + b["timings"]["decode_s"] for b in v["batches"]]
    return per, v.get("peak_gpu_mb")


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def parity(a, family, model, size, tmp):
    ours, theirs = os.path.join(tmp, f"sd-{family}.png"), os.path.join(tmp, f"py-{family}.png")
    run(sd_cmd(a, model, size, "f32", ours))
    run(py_cmd(a, model, size, "f32", theirs))
    x, y = pixels(ours), pixels(theirs)
    d = np.abs(x - y)
    mse = float(np.mean((x - y).astype(np.float64) ** 2))
    return {"family": family, "size": size, "within_1": float(np.mean(d <= 1)), "max_diff": int(d.max()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))}


def speed(a, family, model, size, tmp, extra_sd=(), extra_py=(), label=""):
    rows = {"ours": [], "theirs": []}
    for r in range(a.repeats):
        out = os.path.join(tmp, f"speed-{family}-{r}.png")
        _, _, stdout, _ = measured(sd_cmd(a, model, size, "f16", out, ["--batch-count", str(a.images), "--json",
                                                                         *extra_sd]))
        per, gpu = sd_report(stdout)
        wall, rss, _, _ = measured(sd_cmd(a, model, size, "f16", out, list(extra_sd)))
        rows["ours"].append({"per_image_s": statistics.median(per[1:] or per), "first_image_s": per[0],
                             "process_s": wall, "peak_rss_mb": rss, "peak_gpu_mb": gpu})
        _, _, _, stderr = measured(py_cmd(a, model, size, "f16", out, ["--images", str(a.images), *extra_py]))
        t = line(stderr, "TIMINGS ")
        wall, rss, _, _ = measured(py_cmd(a, model, size, "f16", out, list(extra_py)))
        rows["theirs"].append({"per_image_s": statistics.median(t["per_image_s"][1:] or t["per_image_s"]),
                               "first_image_s": t["per_image_s"][0], "process_s": wall, "peak_rss_mb": rss,
                               "peak_gpu_mb": t.get("peak_gpu_mb")})
    med = {side: {k: statistics.median([r[k] for r in v]) for k in ("per_image_s", "first_image_s", "process_s",
                                                                   "peak_rss_mb")} for side, v in rows.items()}
    for side in rows:
        med[side]["peak_gpu_mb"] = rows[side][-1]["peak_gpu_mb"]
    return {"family": family, "size": size, "label": label, "runs": rows, "median": med}


def layout(a, family, model, size, tmp):
    res = {}
    for fmt in ("nchw", "nhwc"):
        out = os.path.join(tmp, f"layout-{fmt}.png")
        p = run(sd_cmd(a, model, size, "f16", out, ["--batch-count", str(a.images), "--json", "--memory-format", fmt]))
        per, _ = sd_report(p.stdout)
        res[fmt] = statistics.median(per[1:] or per)
    return {"family": family, "size": size, **res}


def fmt_gpu(g):
    return "n/a" if not g else f"{g['allocated']:.0f} / {g['reserved']:.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", required=True)
    ap.add_argument("--sd15", required=True)
    ap.add_argument("--sdxl")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="SD1.5 only, 10 steps, one repeat")
    ap.add_argument("--json")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, f32, 2 steps, the model's own size")
    a = ap.parse_args()
    a.device, a.fast_dtype = ("cpu", "f32") if a.dry_run else ("cuda", "f16")
    if a.quick:
        a.steps, a.repeats, a.sdxl = 10, 1, None
    if a.dry_run:
        a.steps, a.repeats, a.images = 2, 1, 2
    import torch
    if a.dry_run:
        gpu = "none (dry run on the CPU)"
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: this Python's torch sees no CUDA GPU")
    else:
        gpu = torch.cuda.get_device_name(0)

    def native(model, default):
        if not a.dry_run:
            return default
        with open(os.path.join(model, "unet", "config.json")) as f:
            latent = int(json.load(f)["sample_size"])
        with open(os.path.join(model, "vae", "config.json")) as f:
            return latent * 2 ** (len(json.load(f)["block_out_channels"]) - 1)
    families = [("sd15", a.sd15, native(a.sd15, 512))] + ([("sdxl", a.sdxl, native(a.sdxl, 1024))] if a.sdxl else [])
    report = {"gpu": gpu, "steps": a.steps, "parity": [], "speed": [], "offload": [], "layout": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fam, model, size in families:
            report["parity"].append(parity(a, fam, model, size, tmp))
            report["speed"].append(speed(a, fam, model, size, tmp))
            report["layout"].append(layout(a, fam, model, size, tmp))
        fam, model, size = families[-1]
        for mode in ("model", "sequential"):
            theirs, label = ["--offload", mode], f"offload {mode}"
            if a.dry_run and mode == "sequential":
                # accelerate's sequential hooks park weights on `meta` and fail when the execution device is the
                # CPU itself; a dry run only checks our side of this row.
                theirs, label = [], f"offload {mode} (diffusers: none on the CPU)"
            report["offload"].append(speed(a, fam, model, size, tmp, ["--offload", mode], theirs, label=label))
    print(f"\nGPU: {gpu}; {a.steps} Euler steps, CFG 7, f16 unless noted; medians of {a.repeats} alternated runs\n")
    print("| parity (f32) | channel values within ±1 | largest difference | PSNR |\n|---|---|---|---|")
    for p in report["parity"]:
        print(f"| {p['family']} {p['size']} px | {100 * p['within_1']:.2f} % | {p['max_diff']} | {p['psnr_db']:.1f} dB |")
    print("\n| run | s / image (sd-rs / diffusers) | first image | whole process (1 image) | peak GPU MB alloc / "
          "reserved (sd-rs; diffusers) | peak RSS MB |\n|---|---|---|---|---|---|")
    for s in report["speed"] + report["offload"]:
        o, t = s["median"]["ours"], s["median"]["theirs"]
        name = f"{s['family']} {s['size']} px {s['label']}".strip()
        print(f"| {name} | {o['per_image_s']:.3f} / {t['per_image_s']:.3f} ({o['per_image_s'] / t['per_image_s']:.2f}×) "
              f"| {o['first_image_s']:.2f} / {t['first_image_s']:.2f} | {o['process_s']:.2f} / {t['process_s']:.2f} "
              f"| {fmt_gpu(o['peak_gpu_mb'])}; {fmt_gpu(t['peak_gpu_mb'])} | {o['peak_rss_mb']:.0f} / "
              f"{t['peak_rss_mb']:.0f} |")
    print("\n| sd-rs layout (f16) | NCHW s / image | NHWC s / image |\n|---|---|---|")
    for l in report["layout"]:
        print(f"| {l['family']} {l['size']} px | {l['nchw']:.3f} | {l['nhwc']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
