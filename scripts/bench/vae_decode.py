"""One VAE decode of `[1, 4, size/8, size/8]` latents by diffusers' AutoencoderKL, median of N, with the decoder's
FLOPs counted from its real shapes: the reference side of `cargo xtask compare --vae` (ours:
`cargo run --release -p sd-benches --example vae_decode`).

usage: python vae_decode.py --model DIR [--size 512] [--dtype f32|bf16] [--repeats 3] [--channels-last] [--threads N]
       python vae_decode.py --model DIR --size 512 --flops-only

Prints one `VAE_DECODE {json}` line on stdout (median/min seconds and the individual times, `gflop`).
"""
import argparse
import json
import os
import statistics
import time

import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode


def decoder_gflop(config, size):
    """FLOPs of one decode at `size` px, counted by PyTorch's FlopCounterMode on a meta-device copy (no memory, no
    compute): convolutions, the mid-block attention's matmuls and its projections."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
        z = torch.randn(1, vae.config.latent_channels, size // 8, size // 8)
        with FlopCounterMode(display=False) as fc:
            vae.decode(z)
    return fc.get_total_flops() / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a diffusers pipeline folder (its vae/ is used) or a vae folder")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--flops-only", action="store_true", help="count the FLOPs and stop (no weights are loaded)")
    a = ap.parse_args()
    folder = os.path.join(a.model, "vae") if os.path.isdir(os.path.join(a.model, "vae")) else a.model
    gflop = decoder_gflop(AutoencoderKL.load_config(folder), a.size)
    if a.flops_only:
        print("VAE_DECODE " + json.dumps({"size": a.size, "gflop": round(gflop, 1)}), flush=True)
        return
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).eval()
    if a.channels_last:
        vae = vae.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, vae.config.latent_channels, a.size // 8, a.size // 8, generator=g).to(dtype)
    if a.channels_last:
        z = z.to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.repeats):
            s = time.perf_counter()
            vae.decode(z).sample
            if i >= a.warmup:
                times.append(time.perf_counter() - s)
    print("VAE_DECODE " + json.dumps({"impl": "diffusers", "size": a.size, "dtype": a.dtype,
                                      "channels_last": a.channels_last, "median_s": round(statistics.median(times), 4),
                                      "min_s": round(min(times), 4), "times": [round(x, 4) for x in times],
                                      "gflop": round(gflop, 1), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
