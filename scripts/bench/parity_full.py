"""Reference outputs of diffusers/transformers for a FULL-SIZE model folder (made by random_model.py), for
`cargo xtask parity --full`: UNet (one CFG-shaped step), VAE decode and the CLIP text encoder on fixed, seeded
inputs at small spatial sizes (the networks are full size; only the images are small, to keep it fast). f32.
For an SD3 folder: the MMDiT transformer (one CFG-shaped call on 77 CLIP + 256 T5 text tokens) and the 16-channel
VAE decode, in f32 from the folder's bf16 weights (both sides widen the same values; T5-XXL in f32 would need
19 GB, and its blocks are the tiny fixtures' T5 blocks at another width).

usage: python parity_full.py --model DIR --out FILE.safetensors [--latent 16]

The file holds the inputs (`*.in*`) and the outputs; `benches/examples/parity_full.rs` runs sd-rs on the inputs.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(1234)
    t = {}
    if os.path.isdir(os.path.join(a.model, "transformer")):
        sd3(a, g, t)
    else:
        unet_family(a, g, t)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in t.items()}, a.out)
    print("wrote", a.out, file=sys.stderr)


def sd3(a, g, t):
    from diffusers import SD3Transformer2DModel

    tr = SD3Transformer2DModel.from_pretrained(os.path.join(a.model, "transformer"), torch_dtype=torch.float32).eval()
    cfg = tr.config
    t["transformer.in.sample"] = torch.randn(2, cfg.in_channels, a.latent, a.latent, generator=g)
    t["transformer.in.timestep"] = torch.tensor([750.0, 750.0])
    t["transformer.in.context"] = torch.randn(2, 77 + 256, cfg.joint_attention_dim, generator=g)
    t["transformer.in.pooled"] = torch.randn(2, cfg.pooled_projection_dim, generator=g)
    t["transformer.out"] = tr(hidden_states=t["transformer.in.sample"], timestep=t["transformer.in.timestep"],
                              encoder_hidden_states=t["transformer.in.context"],
                              pooled_projections=t["transformer.in.pooled"]).sample
    del tr
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32).eval()
    t["vae.in.latents"] = torch.randn(1, vae.config.latent_channels, a.latent, a.latent, generator=g)
    t["vae.out"] = vae.decode(t["vae.in.latents"]).sample


def unet_family(a, g, t):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=torch.float32).eval()
    cfg = unet.config
    ctx_dim = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    t["unet.in.sample"] = torch.randn(2, cfg.in_channels, a.latent, a.latent, generator=g)
    t["unet.in.timestep"] = torch.tensor([500.0])
    t["unet.in.context"] = torch.randn(2, 77, ctx_dim, generator=g)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        t["unet.in.text_embeds"] = torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g)
        t["unet.in.time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)
        kwargs["added_cond_kwargs"] = {"text_embeds": t["unet.in.text_embeds"], "time_ids": t["unet.in.time_ids"]}
    t["unet.out"] = unet(t["unet.in.sample"], t["unet.in.timestep"], encoder_hidden_states=t["unet.in.context"], **kwargs).sample
    del unet
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32).eval()
    t["vae.in.latents"] = torch.randn(1, vae.config.latent_channels, a.latent, a.latent, generator=g)
    t["vae.out"] = vae.decode(t["vae.in.latents"]).sample
    del vae
    for name in ["text_encoder", "text_encoder_2"]:
        folder = os.path.join(a.model, name)
        if not os.path.isdir(folder):
            continue
        cls = CLIPTextModelWithProjection if name.endswith("_2") else CLIPTextModel
        enc = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
        ids = torch.randint(1, enc.config.vocab_size - 2, (1, 77), generator=g)
        ids[0, 0] = enc.config.bos_token_id
        ids[0, 20:] = enc.config.vocab_size - 1  # end-of-text id in the real vocabularies (49407)
        t[f"{name}.in.ids"] = ids.to(torch.float32)
        out = enc(ids, output_hidden_states=True)
        t[f"{name}.out.last_hidden_state"] = out.last_hidden_state
        t[f"{name}.out.penultimate"] = out.hidden_states[-2]
        del enc


if __name__ == "__main__":
    main()
