"""Scaling benchmark of the Redis queue: jobs/s with 1, 2 and 4 `sd worker` processes behind one `sd serve --queue`
front end, and the latency the queue adds to a job (submit-to-result time minus the worker's own run time, one job
at a time). Starts its own `redis-server` on a free loopback port. The machine's CPU count bounds the scaling:
each worker runs one job at a time with `--threads` intra-op threads.

usage: python3 scripts/bench/queue_scale.py --sd target/release/sd [--model models/sd-tiny-shapes] [--jobs 60]
           [--workers 1,2,4] [--steps 8] [--size 32] [--threads 1]

Standard library only. Prints a JSON summary (last line, prefixed `QUEUE_SCALE`).
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def wait_done(base, job_id):
    while True:
        v = http("GET", f"{base}/v1/jobs/{job_id}")
        if v["status"] in ("done", "failed", "cancelled"):
            return v
        time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default="target/release/sd")
    ap.add_argument("--model", default="models/sd-tiny-shapes")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="f32")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                              "no", "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    procs = [redis]
    results = {"cpus": os.cpu_count(), "jobs": args.jobs, "steps": args.steps, "size": args.size,
               "threads_per_worker": args.threads, "runs": []}
    try:
        time.sleep(0.5)
        front = subprocess.Popen([args.sd, "serve", "--model", args.model, "--port", "0", "--queue", url,
                                  "--max-queue", str(args.jobs + 10)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        procs.append(front)
        base = re.search(r"listening on (http://\S+)", front.stdout.readline()).group(1)
        body = lambda seed: {"prompt": "a yellow circle on a blue background", "seed": seed, "steps": args.steps,
                             "width": args.size, "height": args.size, "sampler_name": "Euler"}
        common = ["--model", args.model, "--dtype", args.dtype, "--threads", str(args.threads), "--no-watermark",
                  "--safety", "off"]
        workers = []
        for n in [int(x) for x in args.workers.split(",")]:
            while len(workers) < n:
                w = subprocess.Popen([args.sd, "worker", "--queue", url, "--name", f"bench-{len(workers)}"] + common,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                workers.append(w)
                procs.append(w)
            # Warm every worker (model load, first-call costs), then measure.
            warm = [http("POST", f"{base}/v1/jobs", body(i))["id"] for i in range(2 * n)]
            for j in warm:
                wait_done(base, j)
            added = []
            if n == 1:
                for i in range(10):
                    t0 = time.perf_counter()
                    v = wait_done(base, http("POST", f"{base}/v1/jobs", body(900 + i))["id"])
                    lat = time.perf_counter() - t0
                    added.append(lat - json.loads(v["info"])["run_seconds"])
            t0 = time.perf_counter()
            ids = [http("POST", f"{base}/v1/jobs", body(i))["id"] for i in range(args.jobs)]
            states = [wait_done(base, j)["status"] for j in ids]
            wall = time.perf_counter() - t0
            run = {"workers": n, "jobs_per_s": args.jobs / wall, "wall_s": wall,
                   "done": states.count("done")}
            if added:
                run["queue_added_latency_ms_median"] = statistics.median(added) * 1000
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    print("QUEUE_SCALE " + json.dumps(results))


if __name__ == "__main__":
    main()
