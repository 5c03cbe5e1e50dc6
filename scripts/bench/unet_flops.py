"""Count the multiply-add FLOPs of one classifier-free-guidance UNet step (batch 2), the numerator of the "share of
the bf16 matmul peak" column in `cargo xtask compare --openvino`.

usage: python unet_flops.py --model DIR [--size 512]

What is counted, 2 FLOPs per multiply-add, from the shapes a real forward pass sees (forward hooks):
  Conv2d:    2 * N * H_out * W_out * C_out * (C_in / groups) * k_h * k_w
  Linear:    2 * rows * in_features * out_features
  Attention: 2 * 2 * B * L_q * L_kv * inner_dim   (Q K^T, then the weights times V, over all heads)
Norms, activations, softmax and additions are left out: they are memory-bound and well under 1 % of the total,
and leaving them out makes the number the one a matmul peak can be compared with. Full-size SD1.5 at 512 px
(latents 64x64, batch 2, 77 text tokens) comes to about 1.354 TFLOP.

The pass runs on PyTorch's "meta" device (shapes only, no weights read, no arithmetic), so it takes seconds.

Prints one `UNET_FLOPS {json}` line on stdout. `count(unet, size)` is what other scripts import.
"""
import argparse
import json
import os

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention


def unet_folder(model):
    """A pipeline folder's unet/ or the folder itself (the convention of unet_step.py)."""
    sub = os.path.join(model, "unet")
    return sub if os.path.isdir(sub) else model


def count(unet, size):
    """FLOPs by kind ({"conv", "linear", "attention"}) of one batch-2 step of `unet` at `size` pixels.

    `unet` may live on any device; its parameters are only read for their shapes."""
    flops = {"conv": 0, "linear": 0, "attention": 0}

    def conv(m, inputs, out):
        n, c_out, h, w = out.shape
        k_h, k_w = m.kernel_size
        flops["conv"] += 2 * n * h * w * c_out * (m.in_channels // m.groups) * k_h * k_w

    def linear(m, inputs, out):
        rows = out.numel() // m.out_features
        flops["linear"] += 2 * rows * m.in_features * m.out_features

    def attention(m, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        # Spatial attention may be handed [B, C, H, W]; the transformer blocks hand [B, L, C].
        tokens = lambda t: t.shape[2] * t.shape[3] if t.dim() == 4 else t.shape[1]  # noqa: E731
        l_q = tokens(hidden)
        l_kv = l_q if context is None else tokens(context)
        flops["attention"] += 2 * 2 * hidden.shape[0] * l_q * l_kv * m.inner_dim

    hooks = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention, with_kwargs=True))
    device = next(unet.parameters()).device
    lat = size // 8
    x = torch.zeros(2, unet.config.in_channels, lat, lat, device=device)
    ctx = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device)
    try:
        with torch.inference_mode():
            unet(x, torch.tensor(500.0, device=device), encoder_hidden_states=ctx)
    finally:
        for h in hooks:
            h.remove()
    return flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a diffusers pipeline folder (its unet/ is used) or a unet folder")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    a = ap.parse_args()
    config = UNet2DConditionModel.load_config(unet_folder(a.model))
    # Built from the config alone on the meta device: the shapes are the real ones, nothing is allocated.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).eval()
    f = count(unet, a.size)
    total = sum(f.values())
    print("UNET_FLOPS " + json.dumps({"size": a.size, "batch": 2, "flops": total, "tflop": round(total / 1e12, 4),
                                      **{k + "_flops": v for k, v in f.items()}}), flush=True)


if __name__ == "__main__":
    main()
