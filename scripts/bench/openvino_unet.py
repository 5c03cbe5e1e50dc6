"""One classifier-free-guidance UNet step (batch 2) of the same diffusers UNet run by OpenVINO's CPU plugin, median
of N: the OpenVINO row of `cargo xtask compare --openvino` (the other rows: `benches/examples/unet_step.rs`, ours,
and `unet_step.py --channels-last`, PyTorch eager).

usage: python openvino_unet.py [--model DIR] [--size 512] [--dtype bf16|f32] [--repeats 5] [--threads 2] [--check]

1. Convert: `openvino.convert_model` traces the diffusers UNet with example inputs of the benchmark's shapes
   (sample [2, 4, size/8, size/8], a scalar timestep, encoder_hidden_states [2, 77, 768]), all static, so the
   plugin can plan every kernel ahead as it would for a deployed model. The IR (f32 weights: `compress_to_fp16`
   off, or the check below would measure fp16 rounding) is cached under target/bench/openvino/, keyed by the model
   folder, its UNet files' sizes and times, the size and the OpenVINO version; a re-run loads it instead of
   converting again (minutes and several GB of RAM for a full-size UNet).
2. Check (after each conversion, or with --check): the IR compiled with f32 inference precision must match
   PyTorch f32 eager on the same inputs within --tolerance (1e-4 max abs), else the script fails: a timing of a
   model that computes something else would be meaningless.
3. Time: compiled with INFERENCE_PRECISION_HINT (bf16 by default: what the other rows run), INFERENCE_NUM_THREADS,
   one stream and the latency hint, i.e. one request at a time on --threads cores, like the other rows. One
   warm-up step (the plugin finishes its kernel choices on the first request), then --repeats timed steps.

Prints one `UNET_STEP {json}` line on stdout, in the format of unet_step.py (`median_s`, `min_s`, `times`), plus
the check's `max_abs_diff_f32` (null when it did not run this time) and the properties the plugin reports.
"""
import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
import openvino as ov
import torch
from diffusers import UNet2DConditionModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Step(torch.nn.Module):
    """The UNet with positional inputs and a plain tensor output: what tracing and the IR's inputs need."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def unet_folder(model):
    sub = os.path.join(model, "unet")
    return sub if os.path.isdir(sub) else model


def inputs(size, in_channels, context_dim):
    """The inputs of unet_step.py: the same seed and draw order, so every row computes the same step."""
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    x = torch.randn(2, in_channels, lat, lat, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g)
    return x, torch.tensor(500.0), ctx


def cache_dir(cache, folder, size):
    """The IR's folder and the key that must match for it to be reused."""
    folder = os.path.realpath(folder)
    files = sorted((n, os.stat(os.path.join(folder, n)).st_size, os.stat(os.path.join(folder, n)).st_mtime_ns)
                   for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
    key = {"model": folder, "files": files, "size": size, "openvino": ov.get_version()}
    name = os.path.basename(os.path.dirname(folder) if os.path.basename(folder) == "unet" else folder)
    tag = hashlib.sha1(folder.encode()).hexdigest()[:8]
    # Through JSON and back so that it compares equal to the key.json read from disk (tuples become lists).
    return os.path.join(cache, f"{name}-{tag}-{size}px"), json.loads(json.dumps(key))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_torch(folder, threads):
    torch.set_num_threads(threads)
    return UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32).eval()


def convert(unet, example, out_dir, key):
    """Trace and convert with static shapes, then save atomically (a killed conversion leaves no half IR)."""
    shapes = [(list(t.shape), ov.Type.f32) for t in example]
    t0 = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(Step(unet), example_input=example, input=shapes)
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ov.save_model(model, os.path.join(tmp, "unet.xml"), compress_to_fp16=False)
    with open(os.path.join(tmp, "key.json"), "w") as f:
        json.dump(key, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    print(f"converted in {time.perf_counter() - t0:.1f} s -> {out_dir}", file=sys.stderr, flush=True)


def compile_cpu(core, xml, precision, threads):
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1",
              "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(core.read_model(xml), "CPU", config)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "target/bench/random-sd15"),
                    help="a diffusers pipeline folder (its unet/ is used) or a unet folder")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16", help="inference precision of the timed steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="compare with PyTorch f32 even when the IR was cached")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed by the f32 check")
    ap.add_argument("--cache", default=os.path.join(ROOT, "target/bench/openvino"), help="where converted IRs live")
    a = ap.parse_args()
    folder = unet_folder(a.model)
    out_dir, key = cache_dir(a.cache, folder, a.size)
    xml = os.path.join(out_dir, "unet.xml")
    cached = os.path.exists(xml) and read_json(os.path.join(out_dir, "key.json")) == key
    config = UNet2DConditionModel.load_config(folder)
    x, t, ctx = inputs(a.size, config["in_channels"], config["cross_attention_dim"])
    unet = None
    if not cached:
        unet = load_torch(folder, a.threads)
        convert(unet, (x, t, ctx), out_dir, key)
    core = ov.Core()
    feed = [x.numpy(), t.numpy(), ctx.numpy()]
    max_diff = None
    if not cached or a.check:
        unet = unet or load_torch(folder, a.threads)
        with torch.inference_mode():
            ref = unet(x, t, encoder_hidden_states=ctx).sample.numpy()
        # The PyTorch model (3.4 GB in f32) goes before OpenVINO compiles its own copies of the weights.
        del unet
        gc.collect()
        f32 = compile_cpu(core, xml, "f32", a.threads)
        got = f32(feed)[0]
        del f32
        gc.collect()
        max_diff = float(np.abs(got - ref).max())
        print(f"f32 check: max abs diff {max_diff:.3g} (tolerance {a.tolerance:g}, output max abs "
              f"{np.abs(ref).max():.3g})", file=sys.stderr, flush=True)
        if not max_diff <= a.tolerance:
            raise SystemExit(f"openvino_unet.py: the OpenVINO f32 UNet differs from PyTorch f32 by {max_diff:.3g} > "
                             f"{a.tolerance:g}: the IR in {out_dir} does not compute the same step; not timing it")
    compiled = compile_cpu(core, xml, a.dtype, a.threads)
    request = compiled.create_infer_request()
    times = []
    for i in range(a.warmup + a.repeats):
        s = time.perf_counter()
        request.infer(feed)
        if i >= a.warmup:
            times.append(time.perf_counter() - s)
    # What the plugin actually runs with, read back: a hint it ignored would otherwise go unnoticed.
    props = {p: compiled.get_property(p) for p in
             ["INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"]}
    props = {p: v.get_type_name() if isinstance(v, ov.Type) else str(v) for p, v in props.items()}
    print("UNET_STEP " + json.dumps({"impl": "openvino", "size": a.size, "dtype": a.dtype,
                                     "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                                     "times": [round(v, 4) for v in times], "threads": a.threads,
                                     "max_abs_diff_f32": max_diff, "openvino": ov.get_version(), "properties": props,
                                     "ir": out_dir}), flush=True)


if __name__ == "__main__":
    main()
