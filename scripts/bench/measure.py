"""Run any command and report its whole-process wall time and peak resident memory.

usage: python measure.py [--json FILE] [--label NAME] -- CMD ARGS...

Peak RSS is the child's `ru_maxrss` (resource.RUSAGE_CHILDREN: the largest resident set of any waited-for
descendant, in KiB on Linux), so the figure covers the whole process tree's biggest member, loading included.
The child's own output passes through; one summary line `MEASURE {json}` goes to stderr (and to --json FILE).
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: measure.py [--json FILE] [--label NAME] -- CMD ARGS...")
    split = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv[:split])
    cmd = argv[split + 1:]
    if not cmd:
        sys.exit("measure.py: no command after --")
    start = time.perf_counter()
    try:
        rc = subprocess.call(cmd)
    except OSError as e:
        sys.exit(f"measure.py: cannot run {cmd[0]}: {e}")
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    out = {"label": a.label, "wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2), "rc": rc, "load1": load,
           "cmd": cmd}
    line = json.dumps(out)
    print("MEASURE " + line, file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
