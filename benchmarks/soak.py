#!/usr/bin/env python
"""Memory under sustained load: does any server process grow?

    python benchmarks/soak.py [--minutes 5] [--connections 32] [--model resnet18]

Starts `mxserve start` with the model (one CPU worker per core), records every server
process's PSS, runs wrk for the whole period while sampling every 15 s, then prints each
process's PSS at start, peak and end, its growth, and the total. The target: no process
grows by more than 50 MB over the run. Workers warm up every batch size before they say
READY, so the start figures already include MXNet's per-shape state.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served import INPUTS, LUA, ROOT, Stack  # noqa: E402

from mxserve.common.proctree import pss_bytes, role  # noqa: E402

MIB = 1024 * 1024
GROWTH_LIMIT_MIB = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", default="resnet18", choices=sorted(INPUTS))
    parser.add_argument("--models-dir", type=Path, default=ROOT / "sample-models")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    stack = Stack(args.model, args.models_dir / f"{args.model}.model",
                  "--workers-per-model", str(os.cpu_count() or 1))
    try:
        pids = sorted(stack.pids())
        roles = {pid: role(pid) for pid in pids}  # read while the processes exist
        samples = {pid: [pss_bytes(pid) / MIB] for pid in pids}
        input_file, field, filename = INPUTS[args.model]
        env = dict(os.environ, BENCH_FILE=str(args.models_dir / input_file),
                   BENCH_FIELD=field, BENCH_FILENAME=filename)
        seconds = int(args.minutes * 60)
        load = subprocess.Popen(
            ["wrk", "-t", str(min(2, args.connections)), "-c", str(args.connections),
             "-d", f"{seconds}s",
             "--timeout", "30s", "-s", str(LUA), f"{stack.url}/{args.model}/predict"],
            env=env, stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        while load.poll() is None:
            time.sleep(15)
            for pid in pids:
                samples[pid].append(pss_bytes(pid) / MIB)
            total = sum(s[-1] for s in samples.values())
            print(f"  {time.monotonic() - started:5.0f}s  total PSS {total:7.1f} MiB", flush=True)
        summary = load.stdout.read() if load.stdout else ""
        for pid in pids:
            samples[pid].append(pss_bytes(pid) / MIB)
    finally:
        stack.stop()
    rows = []
    print(f"\n{args.minutes:g} min of wrk -c{args.connections} on {args.model}:")
    print(f"{'process':10} {'pid':>7} {'start':>8} {'peak':>8} {'end':>8} {'growth':>8}  MiB")
    for pid in pids:
        series = [v for v in samples[pid] if v > 0]
        if not series:
            continue
        growth = series[-1] - series[0]
        rows.append({"process": roles[pid], "pid": pid, "start": round(series[0], 1),
                     "peak": round(max(series), 1), "end": round(series[-1], 1),
                     "growth": round(growth, 1)})
        print(f"{roles[pid]:10} {pid:>7} {series[0]:8.1f} {max(series):8.1f} "
              f"{series[-1]:8.1f} {growth:+8.1f}")
    worst = max(rows, key=lambda r: r["growth"])
    print(f"largest growth: {worst['process']} {worst['growth']:+.1f} MiB "
          f"({'within' if worst['growth'] <= GROWTH_LIMIT_MIB else 'OVER'} the "
          f"{GROWTH_LIMIT_MIB} MiB limit)")
    requests = next((line for line in summary.splitlines() if "requests in" in line), "")
    print(f"load: {requests.strip()}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps({
        "minutes": args.minutes, "connections": args.connections, "model": args.model,
        "processes": rows, "load": requests.strip()}, indent=2))


if __name__ == "__main__":
    main()
