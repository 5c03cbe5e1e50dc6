"""Build a FULL-SIZE Stable Diffusion pipeline (SD1.5 or SDXL architecture) with random weights and save it with
diffusers `save_pretrained`, for `cargo xtask parity --full` and `cargo xtask compare`. Real weights cannot be
downloaded here; the architecture, configs, tokenizer and file layout are those of the real models, so loading,
speed and memory are representative (image content is not).

usage: python random_model.py --family sd15|sdxl --out DIR [--dtype f32|bf16|f16]
"""
import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from common import write_tokenizer_files  # noqa: E402

from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402


def clip(hidden, layers, heads, inter, act, proj=None, with_projection=False):
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, bos_token_id=49406,
                         eos_token_id=2, pad_token_id=1, projection_dim=proj or hidden)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def vae(scaling, force_upcast):
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                         norm_num_groups=32, sample_size=512 if scaling < 0.15 else 512, scaling_factor=scaling,
                         force_upcast=force_upcast)


def sd15(out):
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    tok = write_tokenizer_files(os.path.join(out, "_tok"), 48894, "<|endoftext|>")
    shutil.rmtree(os.path.join(out, "_tok"))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(unet=unet, vae=vae(0.18215, False), text_encoder=clip(768, 12, 12, 3072, "quick_gelu"),
                                   tokenizer=tok, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl(out):
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    tok = write_tokenizer_files(os.path.join(out, "_tok"), 48894, "<|endoftext|>")
    tok2 = write_tokenizer_files(os.path.join(out, "_tok2"), 48894, "!")
    shutil.rmtree(os.path.join(out, "_tok"))
    shutil.rmtree(os.path.join(out, "_tok2"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    return StableDiffusionXLPipeline(unet=unet, vae=vae(0.13025, True), text_encoder=clip(768, 12, 12, 3072, "quick_gelu"),
                                     text_encoder_2=clip(1280, 32, 20, 5120, "gelu", 1280, True), tokenizer=tok,
                                     tokenizer_2=tok2, scheduler=sched)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["sd15", "sdxl"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    a = ap.parse_args()
    if os.path.exists(os.path.join(a.out, "model_index.json")):
        print("exists:", a.out)
        return
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    pipe = (sd15 if a.family == "sd15" else sdxl)(a.out)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    pipe.to(dtype=dtype).save_pretrained(a.out)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
