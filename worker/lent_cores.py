"""Run a batch on more OpenMP threads than the worker's share, when the broker lends the
cores of idle workers.

CPU workers split the cores (workers x threads = cores) so that under load none waits for
another's threads. At low load that split wastes the idle workers' cores, so when every
other CPU worker is idle the broker's REQUEST says `threads: N`, and the worker runs that
batch's forwards on a thread whose OpenMP pool is N wide: the worker serves the batch
inside `lent.lending(N)`, the predictor runs its executor's forward through `lent.run`
(its `run_forward`), and everything else (pre- and postprocessing, custom services' own
code) stays on the main thread.

Only where that is safe and effective: MXNet's naive engine (the pool's default for CPU
workers) runs operators on the calling thread; with the threaded engine a wider caller
widens nothing. MKLDNN's subgraph operators keep per-executor primitives built for the
width of the thread that first ran them, run no faster on a wider thread, and have crashed
there. A worker under either setting reports no share (threads 0), and is lent nothing.

A separate thread per width, not `omp_set_num_threads` before each batch: OpenMP's thread
count is a per-thread setting, and MXNet caches its MKLDNN primitives per calling thread
with the width they were created with. Each width gets its own long-lived thread (MXNet
leaks memory on short-lived ones), created on first use; the widest (every core) is created
and warmed before READY. The handoff costs a thread wake-up, so only models whose forwards
take at least LEND_MIN_MS use it. The figures are in docs/benchmarks.md.
"""
from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
LEND_MIN_MS = 5.0  # a forward this long gains far more from a second core than a handoff costs
SMOOTHING = 0.2  # of the moving average of batch times


class LentCores:
    """The worker's OpenMP width for the batch being served, and the threads that run its
    forwards wider; used only from the worker's main thread."""

    def __init__(self, own_threads: int) -> None:
        self.own_threads = own_threads  # 0: never lent (GPU, threaded engine, subgraphs)
        self.lent_threads = 0  # for the batch being served (lending): what the broker said
        self.forward_ms = 0.0  # moving average: the first forwards always run at home
        self._runners: dict[int, _WideThread] = {}

    def lending(self, threads: int) -> LentCores:
        """Serve one batch with `threads` lent by the broker (0: none), as `with
        lent.lending(n):`; a plain context manager, because this runs for every batch."""
        self.lent_threads = threads
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self.lent_threads = 0

    def run(self, forward: Callable[[], T]) -> T:
        """Run an executor's forward, on lent cores when the batch being served has some."""
        started = time.perf_counter()
        if self.own_threads and self.lent_threads > self.own_threads and (
                self.forward_ms >= LEND_MIN_MS):
            runner = self._runners.get(self.lent_threads)
            if runner is None:
                runner = self._runners[self.lent_threads] = _WideThread(self.lent_threads)
            result = runner.run(forward)
        else:
            result = forward()
        self.observe((time.perf_counter() - started) * 1000.0)
        return result

    def warm_up(self, warm: Callable[[], object], widest: int) -> None:
        """Run `warm` (a forward at every batch size) on the thread for `widest`, the most
        the broker can lend, if this worker's forwards would be lent at all: before READY,
        like the worker's own warm-up, so the first lent request does not pay for the
        thread and its MKLDNN primitives, and the idle memory read after READY includes
        them."""
        if not (0 < self.own_threads < widest and self.forward_ms >= LEND_MIN_MS):
            return
        with self.lending(widest):
            warm()

    def observe(self, forward_ms: float) -> None:
        self.forward_ms += (SMOOTHING * (forward_ms - self.forward_ms) if self.forward_ms
                            else forward_ms)


class _WideThread:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=f"omp-{threads}", daemon=True).start()

    def run(self, batch: Callable[[], T]) -> T:
        self._jobs.put(batch)
        ok, value = self._results.get()
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        set_openmp_threads(self.threads)
        log.info("running batches on %d OpenMP threads when the broker lends idle cores",
                 self.threads)
        while True:
            batch = self._jobs.get()
            try:
                self._results.put((True, batch()))
            except BaseException as exc:  # re-raised in the worker's main thread
                self._results.put((False, exc))


def set_openmp_threads(threads: int) -> None:
    """The calling thread's OpenMP width, through MXNet (so it reaches the OpenMP runtime
    MXNet was linked with, libgomp or Intel's)."""
    import mxnet

    mxnet.base.check_call(mxnet.base._LIB.MXSetNumOMPThreads(ctypes.c_int(threads)))
