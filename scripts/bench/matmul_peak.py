"""The host's bf16 matmul peak in GFLOP/s, as torch (oneDNN / MKL) reaches it: the denominator of the "share of the
bf16 matmul peak" column in `cargo xtask compare --openvino`.

usage: python matmul_peak.py [--threads 2] [--sizes 2048,4096] [--repeats 5]

Large square bf16 matmuls (`a @ b`, 2 * n^3 FLOPs each) at the thread count the UNet steps run with; the best time
of several per size, and the best size. Best rather than median because the question is what the cores can do, and
background load only ever makes a run slower. A UNet step can reach at most this rate, since every FLOP it does
is in a matmul or convolution of smaller, less regular shape.

Prints one `MATMUL_PEAK {json}` line on stdout.
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="2048,4096", help="square matrix sizes to try, comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="timed products per size (after one warm-up)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    per_size = {}
    with torch.inference_mode():
        for n in (int(s) for s in a.sizes.split(",")):
            x = torch.randn(n, n, generator=g).to(torch.bfloat16)
            y = torch.randn(n, n, generator=g).to(torch.bfloat16)
            x @ y  # warm-up: first-call packing and page faults on the output
            best = min(timed(lambda: x @ y) for _ in range(a.repeats))
            per_size[n] = {"best_s": round(best, 5), "gflops": round(2 * n**3 / best / 1e9, 1)}
    peak = max(v["gflops"] for v in per_size.values())
    print("MATMUL_PEAK " + json.dumps({"dtype": "bf16", "threads": torch.get_num_threads(), "peak_gflops": peak,
                                       "sizes": per_size, "torch": torch.__version__}), flush=True)


def timed(f):
    s = time.perf_counter()
    f()
    return time.perf_counter() - s


if __name__ == "__main__":
    main()
