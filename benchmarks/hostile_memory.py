"""Peak memory of the whole server (every process) while 8 hostile JSON bodies arrive at
once, against 8 ordinary ones in the same run.

    python benchmarks/hostile_memory.py [--rounds 3]

Each case starts from the same running server (digits and digits_mlp, two frontends): the
resident memory of all its processes is summed every 10 ms while 8 clients post at once,
and the peak over the idle sum is printed. The baseline is what receiving 8 bodies of the
same size costs at all: 6.5 MB files that the image model refuses from their header
(415). Hostile bodies: 6.5 MB of empty lists for the JSON-tensor model (refused from a
count before the parse), and the largest body of empty lists under max_json_elements
(parsed, one large parse at a time per frontend).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mxserve.common.proctree import descendants, rss_bytes  # noqa: E402
from tests.server_harness import Server  # noqa: E402

MIB = 1024 * 1024
CLIENTS = 8


def total_rss(root: int) -> int:
    total = 0
    for pid in descendants(root) | {root}:
        try:
            total += rss_bytes(pid)
        except OSError:
            pass
    return total


def peak_during(server: Server, model: str, body: str) -> tuple[float, list[int]]:
    idle = total_rss(server.process.pid)
    peak, done = idle, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, total_rss(server.process.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(lambda _: requests.post(
            f"{server.url}/{model}/predict", files={"data": ("x", body)},
            timeout=60).status_code, range(CLIENTS)))
    done.set()
    sampler.join()
    return (peak - idle) / MIB, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = ROOT / "sample-models"
    row = "[" + ",".join(["0.5"] * 64) + "]"
    cases = {
        "6.5 MB refused at the header (baseline)": ("digits", "x" * 6_480_000),
        "ordinary JSON tensor": ("digits_mlp", "[" + row + "]"),
        "6.5 MB of empty lists": ("digits_mlp", "[" + ",".join(["[]"] * 2_160_000) + "]"),
        "empty lists just under max_json_elements": (
            "digits_mlp", "[" + ",".join(["[]"] * 249_000) + "]"),
    }
    server = Server([f"digits_mlp={models / 'digits_mlp.model'}",
                     f"digits={models / 'digits.model'}"]).wait_ready()
    try:
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (model, body) in cases.items():
                growth, statuses = peak_during(server, model, body)
                results[name].append(growth)
                print(f"{name:45s} +{growth:7.1f} MiB peak, statuses {sorted(set(statuses))}",
                      flush=True)
        base = max(1.0, sorted(results["6.5 MB refused at the header (baseline)"])[
            args.rounds // 2])
        print("\nmedian peak growth of all processes, 8 bodies at once:")
        for name, values in results.items():
            median = sorted(values)[args.rounds // 2]
            print(f"  {name:45s} +{median:7.1f} MiB  ({median / base:.1f}x the baseline)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
