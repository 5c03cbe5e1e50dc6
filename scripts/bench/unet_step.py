"""One classifier-free-guidance UNet step (batch 2) of diffusers' UNet2DConditionModel, median of N: the reference
side of the per-step comparison in `cargo xtask compare` (ours: `cargo run --release -p sd-benches --example unet_step`).

usage: python unet_step.py --model DIR [--size 512] [--dtype f32|bf16] [--repeats 5] [--channels-last] [--threads N]

Prints one `UNET_STEP {json}` line on stdout: median/min seconds per step and the individual times.
"""
import argparse
import json
import os
import statistics
import time

import torch
from diffusers import UNet2DConditionModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a diffusers pipeline folder (its unet/ is used) or a unet folder")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    folder = os.path.join(a.model, "unet") if os.path.isdir(os.path.join(a.model, "unet")) else a.model
    unet = UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype).eval()
    if a.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    lat = a.size // 8
    x = torch.randn(2, unet.config.in_channels, lat, lat, generator=g).to(dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(dtype)
    if a.channels_last:
        x = x.to(memory_format=torch.channels_last)
    # SDXL-style UNets also take the pooled text embedding and the six size ids (original, crop, target).
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        ids = torch.tensor([[a.size, a.size, 0, 0, a.size, a.size]] * 2, dtype=dtype)
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, pooled, generator=g).to(dtype), "time_ids": ids}}
    t = torch.tensor(500.0)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.repeats):
            s = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx, **extra).sample
            if i >= a.warmup:
                times.append(time.perf_counter() - s)
    print("UNET_STEP " + json.dumps({"impl": "diffusers", "size": a.size, "dtype": a.dtype, "channels_last": a.channels_last,
                                     "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                                     "times": [round(x, 4) for x in times], "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
