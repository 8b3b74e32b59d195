"""The limit for benchmarks/bench.py: in-process MXNet on the same model files and inputs,
with the server's own decode function and the worker's predictor, and no server.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


# -- the limit: in-process MXNet ------------------------------------------------------------

# MXNet's own configurations (its MKLDNN subgraph fusion on or off) and mxserve's (no
# subgraph, BatchNorms folded into convolutions): the limit is the best of them.
VARIANTS = ("mkldnn", "plain", "folded")


def _served_forward(model_dir: str, extract_dir: str, input_file: str, threads: int,
                    variant: str, batch: int) -> Callable[[], None]:
    """One step as a served worker runs it: decode `batch` images, forward, copy out."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MXNET_SUBGRAPH_BACKEND"] = "MKLDNN" if variant == "mkldnn" else "NONE"
    import mxnet as mx

    from mxserve.common.archive import load_archive
    from mxserve.frontend.decode import Limits, decode_image
    from mxserve.worker.predictor import Predictor
    from mxserve.worker.services.vision import images_to_batch

    archive = load_archive(model_dir, extract_dir)
    spec = archive.signature.inputs[0]
    predictor = Predictor(archive.symbol_path, archive.params_path, [spec.name],
                          [tuple(spec.shape[1:])], mx.cpu(),
                          fold_batch_norm=variant == "folded")
    predictor.set_max_batch_size(batch)
    data = Path(input_file).read_bytes()

    def step() -> None:
        images = [decode_image(data, spec, Limits()) for _ in range(batch)]
        predictor.forward([images_to_batch(images)])[0].asnumpy()

    return step


def _limit_worker(model_dir: str, extract_dir: str, input_file: str, batch: int,
                  seconds: float, variant: str, results: mp.Queue) -> None:
    step = _served_forward(model_dir, extract_dir, input_file, 1, variant, batch)
    for _ in range(3):
        step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    results.put(done / (time.perf_counter() - started))


def _latency_worker(model_dir: str, extract_dir: str, input_file: str, threads: int,
                    variant: str, results: mp.Queue) -> None:
    step = _served_forward(model_dir, extract_dir, input_file, threads, variant, 1)
    samples = []
    for i in range(40):
        started = time.perf_counter()
        step()
        if i >= 5:
            samples.append((time.perf_counter() - started) * 1000)
    results.put(statistics.median(samples))


def _collect(procs: list, queue: mp.Queue, timeout_s: float) -> list[float]:
    """Each process's result; a process that died is an error, never a hang."""
    for p in procs:
        p.start()
    values = []
    deadline = time.monotonic() + timeout_s
    while len(values) < len(procs):
        try:
            values.append(queue.get(timeout=1.0))
        except Exception:  # queue.Empty
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError("a limit measurement process failed") from None
    for p in procs:
        p.join()
    return values


def measure_limit(archive: Path, extract_dir: Path, input_file: Path, seconds: float) -> dict:
    """`archive`: the .model, read exactly as the server reads it."""
    context = mp.get_context("spawn")  # fresh interpreters: no MXNet state before fork
    model_dir = archive
    throughput = {}
    for variant in VARIANTS:
        for batch in (1, 4, 8):
            queue = context.Queue()
            procs = [context.Process(target=_limit_worker, args=(
                str(model_dir), str(extract_dir), str(input_file), batch, seconds, variant,
                queue)) for _ in range(os.cpu_count() or 1)]
            total = sum(_collect(procs, queue, seconds + 300))
            throughput[f"batch{batch}_{variant}"] = round(total, 2)
    latency = {}
    for threads in (1, os.cpu_count() or 1):
        for variant in VARIANTS:
            queue = context.Queue()
            p = context.Process(target=_latency_worker, args=(
                str(model_dir), str(extract_dir), str(input_file), threads, variant, queue))
            [value] = _collect([p], queue, 300)
            latency[f"{threads}thread_{variant}"] = round(value, 2)
    return {"images_per_s": throughput, "best_images_per_s": max(throughput.values()),
            "batch1_latency_ms": latency}


def bracketed_limit(before: dict, after: dict) -> dict:
    """The mean of two limit measurements, key by key, with both bests and their drift."""
    merged = {key: {k: round((before[key][k] + after[key][k]) / 2, 2) for k in before[key]}
              for key in ("images_per_s", "batch1_latency_ms")}
    return {**merged, "best_images_per_s": max(merged["images_per_s"].values()),
            "best_images_per_s_before": before["best_images_per_s"],
            "best_images_per_s_after": after["best_images_per_s"],
            "drift_after_before": round(after["best_images_per_s"]
                                        / before["best_images_per_s"], 3)}


