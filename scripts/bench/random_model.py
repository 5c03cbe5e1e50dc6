"""Build a FULL-SIZE Stable Diffusion pipeline (SD1.5, SDXL, SD3 Medium, SD3.5 Medium or SD3.5 Large architecture)
with random weights and save it with diffusers / transformers `save_pretrained`, for `cargo xtask parity --full` and
`cargo xtask compare`. Real weights cannot be downloaded here; the architecture, configs, tokenizers and file
layout are those of the real models (the big SD3 components sharded with an index, as the hub ships them), so
loading, speed and memory are representative (image content is not).

usage: python random_model.py --family sd15|sdxl|sd3|sd35m|sd35l --out DIR [--dtype f32|bf16|f16]

The SD3 families are built in bf16 unless --dtype says otherwise (SD3.5 Large's transformer and T5 would take
51 GB in f32), one component at a time, each freed once saved. Their three text encoders have the same
architecture in every SD3 model, and with the same seed the same random weights: they are written once, to
`sd3-text-encoders/` beside DIR, and linked into each SD3 folder (27.7 GB for SD3.5 Large, not 39 GB for two).
"""
import argparse
import json
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

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")

# The SD3 transformers as Stability ships them (diffusers' config.json fields); SD3.5 Medium is the MMDiT-X with
# dual attention in its first 13 blocks.
SD3_TRANSFORMERS = {
    "sd3": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192),
    "sd35m": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
                  qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
    "sd35l": dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192,
                  qk_norm="rms_norm"),
}


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


def sd3_text_encoders(dest, dtype):
    """CLIP-L, CLIP-G (both with projection) and T5-XXL v1.1 with their tokenizers, into `dest` (once)."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    done = os.path.join(dest, "done")
    if os.path.exists(done):
        return
    torch.manual_seed(1)
    write_tokenizer_files(os.path.join(dest, "tokenizer"), 48894, "<|endoftext|>")
    write_tokenizer_files(os.path.join(dest, "tokenizer_2"), 48894, "!")
    # T5's real SentencePiece vocabulary is not here: the fixtures' small T5 tokenizer stands in (its ids fall
    # inside the full 32128-row embedding, and the sequence is padded to max_sequence_length either way)
    AutoTokenizer.from_pretrained(os.path.join(FIXTURES, "models", "sd3", "tokenizer_3")).save_pretrained(
        os.path.join(dest, "tokenizer_3"))
    for name, model in [("text_encoder", lambda: clip(768, 12, 12, 3072, "quick_gelu", 768, True)),
                        ("text_encoder_2", lambda: clip(1280, 32, 20, 5120, "gelu", 1280, True)),
                        ("text_encoder_3", lambda: T5EncoderModel(T5Config(
                            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                            relative_attention_num_buckets=32, relative_attention_max_distance=128,
                            feed_forward_proj="gated-gelu", is_encoder_decoder=False, tie_word_embeddings=False)))]:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in the target dtype: T5-XXL alone is 19 GB in f32
        m = model().to(dtype)
        torch.set_default_dtype(previous)
        m.save_pretrained(os.path.join(dest, name), max_shard_size="5GB")
        del m
        print("wrote", os.path.join(dest, name), flush=True)
    open(done, "w").close()


def sd3(out, family, dtype):
    """An SD3-family folder written component by component (see the module docs)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    shared = os.path.join(os.path.dirname(os.path.abspath(out)), "sd3-text-encoders")
    sd3_text_encoders(shared, dtype)
    for name in ["text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"]:
        link = os.path.join(out, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(shared, name), link)
    torch.manual_seed(0)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(os.path.join(out, "scheduler"))
    vae_16 = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=2,
                           norm_num_groups=32, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                           use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
    vae_16.to(dtype).save_pretrained(os.path.join(out, "vae"))
    del vae_16
    # built in the target dtype: SD3.5 Large's 8.1 B parameters would need 32 GB in f32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                        attention_head_dim=64, joint_attention_dim=4096, pooled_projection_dim=2048,
                                        **SD3_TRANSFORMERS[family])
    torch.set_default_dtype(previous)
    transformer.save_pretrained(os.path.join(out, "transformer"), max_shard_size="10GB")
    del transformer
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_3": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "tokenizer_3": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "SD3Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["sd15", "sdxl", *SD3_TRANSFORMERS], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"])
    a = ap.parse_args()
    if os.path.exists(os.path.join(a.out, "model_index.json")):
        print("exists:", a.out)
        return
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    if a.family in SD3_TRANSFORMERS:
        sd3(a.out, a.family, dtypes[a.dtype or "bf16"])
    else:
        pipe = (sd15 if a.family == "sd15" else sdxl)(a.out)
        pipe.to(dtype=dtypes[a.dtype or "f32"]).save_pretrained(a.out)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
