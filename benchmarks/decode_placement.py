"""Does it matter which process decodes the JPEG? resnet18 on every core, without HTTP or
ZeroMQ, two ways, alternating:

  together: one process per core, each decodes an image and runs its forward (the in-process
            limit's shape, and a CPU worker's with image_decode = worker);
  split:    one forward-only process per core, fed by as many decode-only processes through
            a bounded queue of tokens (the shape of frontends decoding for workers).

    python benchmarks/decode_placement.py [--rounds 6] [--seconds 10]

Prints images/s of both per round and split / together. Same decode (common/images.py),
same predictor (worker/predictor.py), 1 OpenMP thread per process, batch 1.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "sample-models" / "resnet18.model"
PHOTO = ROOT / "sample-models" / "examples" / "china.jpg"
BACKLOG = 8  # decoded images waiting for a forward, at most


def _predictor() -> object:
    os.environ.update(OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE="NaiveEngine",
                      MXNET_SUBGRAPH_BACKEND="NONE")  # as the pool starts CPU workers
    sys.path.insert(0, str(ROOT))
    import mxnet as mx

    from mxserve.common.archive import load_archive
    from mxserve.worker.predictor import Predictor

    archive = load_archive(ARCHIVE, tempfile.mkdtemp(prefix="decode-placement-"))
    spec = archive.signature.inputs[0]
    predictor = Predictor(archive.symbol_path, archive.params_path, [spec.name],
                                  [tuple(spec.shape[1:])], mx.cpu())
    predictor.warm_up()
    return predictor


def _decoder():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT))
    from mxserve.common import images
    from mxserve.common.signature import TensorSpec

    data, spec = PHOTO.read_bytes(), TensorSpec("data", (1, 3, 224, 224))
    return lambda: images.decode_image(data, spec, 16_000_000)


def _as_batch(pixels):  # type: ignore[no-untyped-def]
    from mxserve.worker.services.vision import images_to_batch

    return images_to_batch([pixels])


def together(start, seconds: float, results) -> None:  # type: ignore[no-untyped-def]
    predictor, decode = _predictor(), _decoder()
    start.wait()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        predictor.forward([_as_batch(decode())])[0].asnumpy()
        done += 1
    results.put(done / (time.perf_counter() - began))


def forward_only(start, seconds: float, results, ready, room) -> None:  # type: ignore[no-untyped-def]
    predictor = _predictor()
    batch = _as_batch(_decoder()())
    start.wait()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        ready.acquire()
        room.release()
        predictor.forward([batch])[0].asnumpy()
        done += 1
    results.put(done / (time.perf_counter() - began))


def decode_only(start, stop, ready, room) -> None:  # type: ignore[no-untyped-def]
    decode = _decoder()
    start.wait()
    while not stop.is_set():
        if room.acquire(timeout=0.1):
            decode()
            ready.release()


def run(shape: str, seconds: float) -> float:
    context = mp.get_context("spawn")  # fresh interpreters: no MXNet state before fork
    cores = os.cpu_count() or 1
    results, stop = context.Queue(), context.Event()
    if shape == "together":
        start = context.Barrier(cores)
        procs = [context.Process(target=together, args=(start, seconds, results))
                 for _ in range(cores)]
    else:
        start = context.Barrier(2 * cores)
        ready, room = context.Semaphore(0), context.Semaphore(BACKLOG)
        procs = [context.Process(target=forward_only, args=(start, seconds, results, ready,
                                                            room)) for _ in range(cores)]
        procs += [context.Process(target=decode_only, args=(start, stop, ready, room))
                  for _ in range(cores)]
    for p in procs:
        p.start()
    total = sum(results.get(timeout=seconds + 300) for _ in range(cores))
    stop.set()
    for p in procs:
        p.join(10)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    ratios = []
    for i in range(args.rounds):
        joined, split = run("together", args.seconds), run("split", args.seconds)
        ratios.append(split / joined)
        print(f"round {i + 1}: together {joined:.1f} images/s, split {split:.1f}: "
              f"{ratios[-1]:.3f}", flush=True)
    print(f"split / together, median of {args.rounds}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
