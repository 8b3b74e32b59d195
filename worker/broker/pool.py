"""The broker's local worker processes: where each runs, starting, reaping, restarting.

`plan_workers` is the placement rule (pure, unit-tested): with `gpus` = N each model gets
one worker per GPU, pinned with CUDA_VISIBLE_DEVICES so that inside the worker it is always
device 0; MMS 0.4's `--gpu K` pins one worker per model to GPU K; otherwise each model gets
`workers_per_model` CPU workers, and every worker gets OMP_NUM_THREADS = cores / all CPU
workers (at least 1), because MXNet's default of one thread per core in every worker
oversubscribes the machine and collapses throughput.

`WorkerPool` starts the planned processes, notices exits (`reap`), and restarts crashed
workers with exponential backoff. A worker that exits with EXIT_MODEL_LOAD, or whose model
the broker marked failed (`failed`: it never became ready in time), is not restarted: the
model is failed with the reason, the other models keep serving.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mxserve.common.child_processes import spawn
from mxserve.common.errors import EXIT_MODEL_LOAD
from mxserve.worker.broker.forkserver_client import ForkedProcess, ForkServer

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker up this long has its backoff reset
FORK_SERVER_WAIT_S = 30.0  # CPU workers wait this long for the fork server, then spawn
FORK_SERVER_RETRY_S = 0.05
_generations = itertools.count(1000)  # workers added later get identities never used before


@dataclass(frozen=True)
class WorkerSpec:
    model: str
    slot: int
    gpu: int | None  # the physical GPU, exported as CUDA_VISIBLE_DEVICES
    threads: int

    @property
    def env(self) -> dict[str, str]:
        # Each default below is explained, with its measurements, in docs/benchmarks.md
        # ("Measurements behind the design"); an operator's own setting always wins.
        env = {"OMP_NUM_THREADS": str(self.threads), "MXNET_CPU_WORKER_NTHREADS": "1",
               # per-batch-size executors share weights only without MKLDNN's subgraphs
               "MXNET_SUBGRAPH_BACKEND": os.environ.get("MXNET_SUBGRAPH_BACKEND", "NONE"),
               "KMP_BLOCKTIME": os.environ.get("KMP_BLOCKTIME", "0")}
        if self.threads > 1:
            # spinning OpenMP threads steal cores shared with frontends and other workers
            env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        else:
            # a one-thread worker has OpenMP threads only while lent idle cores: a short
            # spin between a forward's back-to-back regions beats sleeping there
            env["GOMP_SPINCOUNT"] = os.environ.get("GOMP_SPINCOUNT", "100000")
            if "OMP_WAIT_POLICY" in os.environ:
                env["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        else:
            # one engine thread only adds a handoff per operator; GPUs keep the threaded
            # engine for its asynchronous kernel launches
            env["MXNET_ENGINE_TYPE"] = os.environ.get("MXNET_ENGINE_TYPE", "NaiveEngine")
        return env


def plan_workers(models: list[str], gpus: int = 0, gpu: int = -1, workers_per_model: int = 1,
                 threads_per_worker: int = 0, cores: int | None = None) -> list[WorkerSpec]:
    cores = cores or os.cpu_count() or 1
    if gpu >= 0:
        devices: list[int | None] = [gpu]
    elif gpus > 0:
        devices = list(range(gpus))
    else:
        devices = [None] * workers_per_model
    total = len(models) * len(devices)
    threads = threads_per_worker or max(1, cores // max(total, 1))
    return [WorkerSpec(model=m, slot=i, gpu=d, threads=threads)
            for m in models for i, d in enumerate(devices)]


@dataclass
class ManagedWorker:
    spec: WorkerSpec
    process: subprocess.Popen | ForkedProcess | None = None
    generation: int = 0
    started_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restart_at: float | None = 0.0  # None: not to be started (failed, or stopping)
    ready: bool = False  # this process said READY at least once
    retired: bool = False  # scaled down or unregistered: stopped for good, then forgotten
    exit_codes: list[int] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"{self.spec.model}-{self.spec.slot}-{self.generation}"


class WorkerPool:
    def __init__(self, specs: list[WorkerSpec], archives: dict[str, Path], broker_endpoint: str,
                 max_batch_size: dict[str, int], heartbeat_interval_s: float, log_level: str,
                 services: dict[str, tuple[str, str]] | None = None,
                 fork_server: Path | None = None, batch_memory_mb: float = 0.0,
                 worker_args: list[str] | None = None) -> None:
        """`fork_server`: the fork server's socket path (in the run directory), or None to
        start every worker as a fresh process."""
        self.specs = specs
        self.workers = [ManagedWorker(spec) for spec in specs]
        self.archives = archives
        self.broker_endpoint = broker_endpoint
        self.max_batch_size = max_batch_size
        self.heartbeat_interval_s = heartbeat_interval_s
        self.log_level = log_level
        self.services = services or {}  # model -> (service file, class name)
        self.names: dict[str, str] = {}  # a later version's key -> its model's name
        self.batch_memory_mb = batch_memory_mb
        self.worker_args = worker_args or []  # the same for every worker (wire limits)
        # CPU workers are forked from a process that imported MXNet once (worker/forkserver.py)
        cpu_specs = [spec for spec in specs if spec.gpu is None]
        self.fork_server: ForkServer | None = None
        if fork_server is not None and cpu_specs:
            self.fork_server = ForkServer({**os.environ, **cpu_specs[0].env}, spawn,
                                          fork_server)
            self.fork_server.start()
        self.failed: dict[str, str] = {}  # model -> why it cannot load
        self.restarts: dict[str, int] = {}

    def start_due(self, now: float) -> None:
        if self.fork_server is not None:
            self.fork_server.keep_running()
        for worker in self.workers:
            due = worker.restart_at is not None and now >= worker.restart_at
            if worker.process is None and due:
                self._start(worker, now)

    def add(self, model: str, specs: list[WorkerSpec], archive: Path | None = None,
            max_batch_size: int | None = None, service: tuple[str, str] | None = None,
            name: str | None = None) -> None:
        """More workers (a registered model, or scaling up); started by `start_due`.
        `name`: the model's name where its key `model` is another (a later version)."""
        if name is not None and name != model:
            self.names[model] = name
        if archive is not None:
            self.archives[model] = archive
        if max_batch_size is not None:
            self.max_batch_size[model] = max_batch_size
        if service is not None:
            self.services[model] = service
        self.failed.pop(model, None)
        used = {w.spec.slot for w in self.workers if w.spec.model == model}
        for spec in specs:
            slot = next(i for i in range(len(used) + len(specs) + 1) if i not in used)
            used.add(slot)
            spec = WorkerSpec(model=model, slot=slot, gpu=spec.gpu, threads=spec.threads)
            self.specs.append(spec)
            self.workers.append(ManagedWorker(spec, generation=next(_generations)))

    def retire(self, model: str, count: int | None = None,
               prefer: frozenset[int] = frozenset()) -> list[int]:
        """Stop `count` of the model's workers (all when None) for good: SIGTERM (a busy one
        finishes its batch first), never restarted, forgotten once reaped. Workers whose
        pid is in `prefer` (idle ones) go first. Returns the pids signalled."""
        candidates = [w for w in self.workers if w.spec.model == model and not w.retired]
        candidates.sort(key=lambda w: w.process is None or w.process.pid not in prefer)
        pids = []
        for worker in candidates if count is None else candidates[:count]:
            worker.retired = True
            worker.restart_at = None
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
                pids.append(worker.process.pid)
        self._forget_stopped()
        return pids

    def _forget_stopped(self) -> None:
        self.workers = [w for w in self.workers if not (w.retired and w.process is None)]
        self.specs = [w.spec for w in self.workers]

    def _start(self, worker: ManagedWorker, now: float) -> None:
        spec = worker.spec
        env = {**os.environ, **spec.env}
        how = self._how_to_start(env, now)
        if how == "wait":
            worker.restart_at = now + FORK_SERVER_RETRY_S
            return
        worker.generation += 1
        argv = [sys.executable, "-m", "mxserve.worker", "--archive", str(self.archives[spec.model]),
                "--model-name", self.names.get(spec.model, spec.model),
                "--broker", self.broker_endpoint,
                "--max-batch-size", str(self.max_batch_size[spec.model]),
                "--batch-memory-mb", str(self.batch_memory_mb),
                "--worker-id", worker.identity,
                "--heartbeat-interval", str(self.heartbeat_interval_s),
                "--log-level", self.log_level, *self.worker_args]
        if spec.model in self.names:
            argv += ["--served-as", spec.model]
        if spec.gpu is not None:
            argv += ["--gpu", "0"]  # pinned by CUDA_VISIBLE_DEVICES: always device 0 inside
        service_file, class_name = self.services.get(spec.model, ("", ""))
        if service_file:
            argv += ["--service-file", service_file]
        if class_name:
            argv += ["--service-class", class_name]
        worker.process = None
        if how == "fork":
            assert self.fork_server is not None
            try:
                worker.process = self.fork_server.spawn(argv[3:], env, " ".join(argv))
            except OSError as exc:
                log.warning("the fork server failed (%s); starting %s as a fresh process",
                            exc, worker.identity)
                how = "spawn"
        if worker.process is None:
            worker.process = spawn(argv, env)
        worker.started_at = now
        worker.ready = False
        worker.restart_at = None
        log.info("started worker %s (pid %d) for %s on %s, %d threads (%s)", worker.identity,
                 worker.process.pid, spec.model, f"gpu {spec.gpu}" if spec.gpu is not None
                 else "cpu", spec.threads, "forked" if how == "fork" else "a fresh process")

    def _how_to_start(self, env: dict[str, str], now: float) -> str:
        """"fork" from the fork server, "spawn" a fresh process, or "wait" for the server
        (started, not yet ready: for FORK_SERVER_WAIT_S after it was started)."""
        server = self.fork_server
        if server is None or env != server.env:
            return "spawn"
        if server.can_fork(env):  # (restarts it if it died)
            return "fork"
        if time.monotonic() - server.started_at < FORK_SERVER_WAIT_S:
            return "wait"
        return "spawn"

    def reap(self, now: float) -> list[tuple[ManagedWorker, int, int]]:
        """Notice exited workers; schedule restarts; return (worker, pid, exit code)."""
        exited = []
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            exited.append((worker, process.pid, code))
            worker.process = None
            worker.exit_codes.append(code)
            if worker.retired:
                log.info("worker %s (pid %d) stopped (%s)", worker.identity, process.pid, code)
                continue
            if code == EXIT_MODEL_LOAD or worker.spec.model in self.failed:
                self.failed.setdefault(worker.spec.model, "the model failed to load (see the "
                                       "worker log)")
                log.error("worker %s: model %s cannot load; not restarting", worker.identity,
                          worker.spec.model)
                continue
            if now - worker.started_at > STABLE_AFTER_S:
                worker.backoff_s = BACKOFF_START_S
            worker.restart_at = now + worker.backoff_s
            self.restarts[worker.spec.model] = self.restarts.get(worker.spec.model, 0) + 1
            log.warning("worker %s (pid %d) exited with %s; restarting in %.1fs",
                        worker.identity, process.pid, code, worker.backoff_s)
            worker.backoff_s = min(worker.backoff_s * 2, BACKOFF_MAX_S)
        self._forget_stopped()
        return exited

    def mark_ready(self, pid: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.pid == pid:
                worker.ready = True

    def overdue(self, now: float, load_timeout_s: float) -> list[ManagedWorker]:
        """Running workers that have not said READY within load_timeout_s of starting."""
        return [w for w in self.workers if w.process is not None and not w.ready
                and not w.retired and w.process.poll() is None
                and now - w.started_at > load_timeout_s]

    def kill(self, pid: int) -> None:
        """SIGKILL a hung worker; `reap` then restarts it."""
        for worker in self.workers:
            if worker.process is not None and worker.process.pid == pid:
                worker.process.kill()

    def total(self, model: str) -> int:
        return sum(1 for w in self.workers if w.spec.model == model and not w.retired)

    def next_restart(self) -> float | None:
        due = [w.restart_at for w in self.workers if w.process is None and w.restart_at]
        return min(due) if due else None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker, wait up to timeout_s, SIGKILL the rest; then the fork
        server."""
        for worker in self.workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in time; killing it", worker.identity)
                worker.process.kill()
                worker.process.wait()
            worker.process = None
        if self.fork_server is not None:
            self.fork_server.stop()
