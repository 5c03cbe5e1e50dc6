"""Single-file conversion at full size, for `cargo xtask parity --full --sd3`: a full-size random SD3.5 Medium folder
(random_model.py --family sd35m) written as one checkpoint in Stability's original layout (the MMDiT-X under
`model.diffusion_model.`, the VAE under `first_stage_model.`, CLIP-L and CLIP-G under `text_encoders.*`, as in
`sd3.5_medium_incl_clips`-style files; bf16 as shipped), then loaded by diffusers' `from_single_file` and converted
by `sd convert`: every tensor must be bit-identical between the two (same names, shapes, dtypes and bytes).

usage: python sd3_single_file_full.py --model DIR --sd PATH/TO/sd --work DIR

The checkpoint and sd's converted folder go to --work (about 7 GB each; both are removed at the end unless
--keep). The original layout is written by the fixtures' own inverse of diffusers' converter
(scripts/fixtures/gen_94_sd3_single_file.py), which that script checks on the tiny model.
"""
import argparse
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from gen_60_convert import vae_to_ldm  # noqa: E402
from gen_94_sd3_single_file import prefixed, transformer_to_original  # noqa: E402

from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402
from transformers import CLIPTextModelWithProjection  # noqa: E402

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def write_checkpoint(model, path):
    sd = {}
    tr = SD3Transformer2DModel.from_pretrained(os.path.join(model, "transformer"), torch_dtype=torch.bfloat16)
    sd.update(transformer_to_original(tr.state_dict(), tr.config.num_layers, "model.diffusion_model."))
    del tr
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.bfloat16)
    sd.update(vae_to_ldm(vae.state_dict(), vae.config))
    del vae
    for name, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        enc = CLIPTextModelWithProjection.from_pretrained(os.path.join(model, name), torch_dtype=torch.bfloat16)
        sd.update(prefixed(enc.state_dict(), f"text_encoders.{key}.transformer."))
        del enc
    save_file({k: v.contiguous() for k, v in sorted(sd.items())}, path)
    return len(sd)


def ours(folder, component):
    """Every tensor of one component of sd's converted folder (single file or shards)."""
    d = os.path.join(folder, component)
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sd", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    ckpt = os.path.join(a.work, "sd3.5_medium_random.safetensors")
    converted = os.path.join(a.work, "converted")
    torch.set_grad_enabled(False)
    if not os.path.exists(ckpt):
        n = write_checkpoint(a.model, ckpt)
        print(f"wrote {ckpt}: {n} tensors, {os.path.getsize(ckpt) / 1e9:.2f} GB", flush=True)
    if os.path.isdir(converted):
        shutil.rmtree(converted)
    subprocess.run([a.sd, "convert", ckpt, "--output", converted, "--config-dir", a.model], check=True)
    pipe = StableDiffusion3Pipeline.from_single_file(ckpt, config=a.model, local_files_only=True,
                                                     torch_dtype=torch.bfloat16, text_encoder_3=None,
                                                     tokenizer_3=None)
    failures, total = [], 0
    for c in COMPONENTS:
        theirs = getattr(pipe, c).state_dict()
        mine = ours(converted, c)
        # diffusers' models carry non-persistent or derived entries a saved folder does not (none expected here)
        missing = sorted(set(theirs) - set(mine))
        extra = sorted(set(mine) - set(theirs))
        if missing or extra:
            failures.append(f"{c}: names differ: missing {missing[:5]} extra {extra[:5]}")
        same = 0
        for k in sorted(set(theirs) & set(mine)):
            t, m = theirs[k], mine[k]
            if t.dtype != m.dtype or t.shape != m.shape or not torch.equal(t, m):
                failures.append(f"{c}/{k}: {m.dtype}{list(m.shape)} vs diffusers {t.dtype}{list(t.shape)}"
                                f"{'' if t.shape != m.shape or t.dtype != m.dtype else ' (values differ)'}")
            else:
                same += 1
        total += same
        print(f"| {c} | {len(theirs)} tensors | {same} bit-identical | {sum(v.numel() for v in theirs.values()):,} "
              f"parameters |", flush=True)
    if not a.keep:
        shutil.rmtree(converted)
        os.remove(ckpt)
    if failures:
        print("\n".join(failures[:20]), file=sys.stderr)
        sys.exit(f"single-file SD3.5 Medium: {len(failures)} tensors differ from diffusers' from_single_file")
    print(f"single-file SD3.5 Medium at full size: all {total} tensors bit-identical to diffusers' from_single_file")


if __name__ == "__main__":
    main()
