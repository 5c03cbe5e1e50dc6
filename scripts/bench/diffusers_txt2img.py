"""Time diffusers' StableDiffusionPipeline (or the XL one) on a model folder: the reference side of `cargo xtask compare`.

usage: python diffusers_txt2img.py --model DIR [--steps 20] [--size 512] [--dtype f32|bf16|f16] [--seed 0]
                                   [--sampler euler|euler-a|ddim|dpmpp-2m|default] [--out FILE.png] [--threads N]
                                   [--device cpu|cuda] [--images N] [--offload none|model|sequential] [--no-t5]

Run it under measure.py for whole-process wall time and peak RSS; this script prints its own phase timings
(import, load, generate) as one `TIMINGS {json}` line on stderr. With `--images N` (N > 1) the first image is a
warm-up and the others are timed one by one (`per_image_s`); on CUDA the peak GPU memory of the timed images
(`torch.cuda.max_memory_allocated` / `max_memory_reserved`, MB) is reported too. The initial noise always comes
from a CPU generator, as sd-rs makes it, so the same seed gives the same starting latents on every device.
"""
import argparse
import json
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

SAMPLERS = {"euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler,
            "dpmpp-2m": DPMSolverMultistepScheduler}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=1, help="images to generate (the first is a warm-up when > 1)")
    ap.add_argument("--offload", choices=["none", "model", "sequential"], default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default="euler", choices=["default", *SAMPLERS])
    ap.add_argument("--prompt", default="a lighthouse at dawn, oil painting")
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    ap.add_argument("--out", help="save the image here")
    ap.add_argument("--no-t5", action="store_true", help="SD3: load without T5 (text_encoder_3=None), as sd --no-t5")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    t_import = time.perf_counter() - T0
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    cuda = a.device.startswith("cuda")
    t = time.perf_counter()
    extra = {"text_encoder_3": None, "tokenizer_3": None} if a.no_t5 else {}
    pipe = DiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype, **extra)
    if a.sampler != "default":
        pipe.scheduler = SAMPLERS[a.sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if a.offload == "model":
        pipe.enable_model_cpu_offload(device=a.device)
    elif a.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=a.device)
    elif a.device != "cpu":
        pipe.to(a.device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    per_image = []
    with torch.inference_mode():
        for i in range(max(a.images, 1)):
            if cuda and i == 1:
                torch.cuda.reset_peak_memory_stats()
            ti = time.perf_counter()
            image = pipe(a.prompt, num_inference_steps=a.steps, height=a.size, width=a.size, guidance_scale=a.cfg,
                         generator=torch.Generator("cpu").manual_seed(a.seed)).images[0]
            if cuda:
                torch.cuda.synchronize()
            per_image.append(time.perf_counter() - ti)
    t_gen = time.perf_counter() - t
    if a.out:
        image.save(a.out)
    timings = {"import_s": round(t_import, 3), "load_s": round(t_load, 3), "generate_s": round(t_gen, 3),
               "threads": torch.get_num_threads(), "per_image_s": [round(x, 4) for x in per_image]}
    if cuda:
        timings["peak_gpu_mb"] = {"allocated": torch.cuda.max_memory_allocated() / 2**20,
                                  "reserved": torch.cuda.max_memory_reserved() / 2**20}
    print("TIMINGS " + json.dumps(timings), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
