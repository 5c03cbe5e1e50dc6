"""Load benchmark of `sd serve`: N txt2img requests at concurrency C through the A1111 API.

Reports throughput, latency percentiles, 429 answers, the server's resident memory before and after the run
(VmRSS; growth beyond noise would be a leak), and what HTTP adds over in-process generation: per request,
latency minus the inference thread's own time (`run_seconds` in `info`) at concurrency 1, and the per-image time of
`sd generate --batch-count K` in one process for comparison.

usage: python3 scripts/bench/serve_load.py --sd target/release/sd --model models/sd-tiny-shapes \
           [--requests 500] [--concurrency 4] [--steps 8] [--size 32] [--dtype f32] [--sequential 20]

Standard library only. Prints a JSON summary (last line, prefixed `SERVE_LOAD`).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def post(url, body, timeout=3600):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = json.loads(r.read())
            return r.status, time.perf_counter() - t0, data
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - t0, None


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default="target/release/sd")
    ap.add_argument("--model", default="models/sd-tiny-shapes")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = sd's default)")
    ap.add_argument("--sequential", type=int, default=20, help="requests at concurrency 1 for the overhead figure")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--sampler", default="Euler")
    args = ap.parse_args()

    common = ["--model", args.model, "--dtype", args.dtype, "--no-watermark", "--safety", "off"]
    if args.threads:
        common += ["--threads", str(args.threads)]
    srv = subprocess.Popen([args.sd, "serve", "--port", "0", "--max-queue", str(args.max_queue)] + common,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = srv.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            sys.exit(f"sd serve did not start: {line!r}")
        base = m.group(1)
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(base + "/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if time.time() - t0 > 600:
                sys.exit("sd serve was not ready within 600 s")
            time.sleep(0.2)
        body = lambda seed: {"prompt": "a yellow circle on a blue background", "seed": seed, "steps": args.steps,
                             "width": args.size, "height": args.size, "sampler_name": args.sampler, "cfg_scale": 7}
        url = base + "/sdapi/v1/txt2img"
        for i in range(3):
            post(url, body(i))
        rss_before = rss_kb(srv.pid)

        # Concurrency 1: what HTTP, the queue and base64 add to the inference thread's own time.
        seq_lat, seq_run = [], []
        for i in range(args.sequential):
            code, lat, data = post(url, body(1000 + i))
            if code == 200:
                seq_lat.append(lat)
                seq_run.append(json.loads(data["info"])["run_seconds"])

        # The load run.
        latencies, codes, lock = [], {}, threading.Lock()
        counter = iter(range(args.requests))

        def worker():
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                code, lat, _ = post(url, body(i))
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == 200:
                        latencies.append(lat)

        t_start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
        rss_after = rss_kb(srv.pid)
        hwm = rss_kb(srv.pid, "VmHWM")
    finally:
        srv.terminate()
        srv.wait(timeout=120)

    # In-process reference: the same images from one `sd generate` process (load time excluded).
    k = max(1, args.sequential)
    out_dir = os.path.join("target", "bench", "serve-load-generate")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    gen = subprocess.run([args.sd, "generate", "a yellow circle on a blue background", "--seed", "1000", "--steps",
                          str(args.steps), "-W", str(args.size), "-H", str(args.size), "--sampler", args.sampler,
                          "--batch-count", str(k), "--json", "--overwrite", "-o", out_dir + "/{n}.png"] + common,
                         capture_output=True, text=True)
    gen_wall = time.perf_counter() - t0
    gen_per_image = None
    if gen.returncode == 0:
        j = json.loads(gen.stdout)
        gen_per_image = (gen_wall - j["load_s"]) / k

    seq_mean = statistics.mean(seq_lat) if seq_lat else None
    run_mean = statistics.mean(seq_run) if seq_run else None
    summary = {
        "model": args.model, "steps": args.steps, "size": args.size, "dtype": args.dtype,
        "requests": args.requests, "concurrency": args.concurrency,
        "ok": codes.get(200, 0), "status_429": codes.get(429, 0), "other_errors": sum(v for c, v in codes.items() if c not in (200, 429)),
        "throughput_rps": codes.get(200, 0) / wall if wall else None, "wall_s": wall,
        "p50_s": pct(latencies, 50), "p99_s": pct(latencies, 99),
        "rss_before_mb": rss_before / 1024, "rss_after_mb": rss_after / 1024, "peak_rss_mb": hwm / 1024,
        "sequential_latency_s": seq_mean, "sequential_run_s": run_mean,
        "http_overhead_pct": (seq_mean - run_mean) / run_mean * 100 if seq_mean and run_mean else None,
        "sd_generate_per_image_s": gen_per_image,
        "server_vs_generate": seq_mean / gen_per_image if seq_mean and gen_per_image else None,
    }
    print("SERVE_LOAD " + json.dumps(summary))


if __name__ == "__main__":
    main()
