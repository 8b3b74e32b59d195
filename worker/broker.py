"""The broker: one process per host between the frontends and the workers
(docs/design.md, "Scheduling and back-pressure").

    python -m mxserve.worker.broker    (configured by MXSERVE_* variables; see common/config.py)

Two ROUTER sockets, both with ROUTER_MANDATORY (a send to a vanished peer fails loudly
instead of being dropped): frontends (DEALER, one per frontend thread) send REQUEST and
CATALOG messages; workers (DEALER, one per worker process) send READY, REPLY, HEARTBEAT.

Per model: a bounded FIFO of pending requests and the set of its idle workers. The loop:

    poll -> receive_from_workers -> receive_from_frontends -> dispatch, and every 50 ms
    (or at once on a signal): reap_children -> expire -> purge_silent_workers -> heartbeat
    -> start_due_workers

Rules: a full queue or a model with no live worker answers 503 at once; a request whose
deadline passes while queued is answered 504 and never executed; a worker that overruns
its batch's deadline is killed (504 to its requests) and restarted; a worker that dies
with a batch has those requests re-queued once at the head of the queue (a second loss
is 503). On SIGTERM the broker drains: it refuses new requests, reports unhealthy, lets
in-flight batches finish (bounded by drain_timeout_s), then stops its workers and exits.
Signal handlers only set flags and wake the poller through a self-pipe.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import zmq

from mxserve.common import metrics
from mxserve.common.archive import ModelArchive, load_archive
from mxserve.common.child_processes import become_subreaper
from mxserve.common.config import (
    MAX_BATCH_DELAY_MS,
    MAX_WORKERS_PER_MODEL,
    SECRET_ENV,
    Config,
    batching_for,
    broker_endpoints,
    load_config,
    max_frame_bytes,
    max_reply_frame_bytes,
    parse_model_spec,
    service_for,
)
from mxserve.common.errors import (
    EXIT_BAD_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    MXServeError,
    ProtocolError,
    ServiceUnavailable,
)
from mxserve.common.logs import setup_logging
from mxserve.common.private_files import private_dir
from mxserve.common.protocol import Item, Kind, Message, from_frames, to_frames, typed_field
from mxserve.common.transport import NOBLOCK, has_message, recv_frames, send_frames
from mxserve.worker.pool import WorkerPool, plan_workers
from mxserve.worker.registry import Registry

log = logging.getLogger("broker")

# What a well-framed message with a wrong field raises in its handler: dropped (a frontend
# gets an error reply), never the broker's end.
MALFORMED = (ProtocolError, TypeError, ValueError, KeyError, AttributeError, OverflowError)
MANAGEMENT_FRAME_BYTES = 1024 * 1024  # names, paths and numbers only
LIVENESS = 3  # missed heartbeats before an idle worker is presumed dead
HOUSEKEEPING_S = 0.05  # reaping, expiry, heartbeats: 20 times a second is plenty
OVERRUN_GRACE_S = 1.0  # a batch may run this long past its last deadline before the kill
# On stop, workers get SIGTERM and this long before SIGKILL: an idle one exits at once, and
# one still inside a forward after the drain deadline has had its requests answered already.
WORKER_STOP_S = 3.0


@dataclass
class Pending:
    """A request waiting for, or being served by, a worker."""

    frontend: bytes  # ROUTER identity of the frontend socket that sent it
    item: Item
    deadline: float  # time.monotonic()
    received: float
    attempts: int = 0


@dataclass
class WorkerState:
    identity: bytes
    model: str
    device: str
    pid: int
    max_batch_size: int
    last_seen: float
    batch: dict[str, Pending] = field(default_factory=dict)
    batch_started: float = 0.0
    batch_deadline: float = 0.0
    retiring: bool = False  # scaled down: finishes its batch, gets no other
    threads: int = 0  # its share of the cores (OpenMP threads); 0 on a GPU
    threads_in_use: int = 0  # for the batch it runs: its share, or more when cores are lent


def lendable_threads(worker: WorkerState, workers: Iterable[WorkerState], cores: int) -> int:
    """The OpenMP threads `worker` may use for the batch it is being given: its share, or
    the cores that other busy CPU workers do not use if that is more (worker/lent_cores.py).
    A worker lent cores keeps them for its batch; one dispatched meanwhile gets its share,
    so for the rest of that batch the cores are oversubscribed by that share at most."""
    if not 0 < worker.threads < cores:  # a GPU worker, or one that has every core already
        return worker.threads
    in_use = sum(other.threads_in_use for other in workers
                 if other.batch and other.threads and other is not worker)
    return max(worker.threads, cores - in_use)


@dataclass
class ModelState:
    archive: ModelArchive | None
    max_batch_size: int = 1
    max_batch_delay_s: float = 0.0
    batches: int = 0  # dispatched so far, with `batched` requests in them
    batched: int = 0
    queue: deque[Pending] = field(default_factory=deque)
    idle: deque[bytes] = field(default_factory=deque)
    workers: set[bytes] = field(default_factory=set)
    error: str = ""
    removing: bool = False  # unregistered: draining, then its workers stop and it is gone


class Broker:
    def __init__(self, config: Config, frontend_endpoint: str, worker_endpoint: str,
                 management_endpoint: str, run_dir: Path) -> None:
        self.config = config
        self.models: dict[str, ModelState] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.draining = False
        self.drain_deadline = 0.0
        self.stop_requested = False
        self.cores = os.cpu_count() or 1  # what CPU workers share (worker/pool.py)
        metrics.forget_dead_processes()  # a previous broker's gauges, if it was killed
        self.extract_root = run_dir / "models"
        archives = self._load_archives(self.extract_root)
        for name, model in self.models.items():
            batching = batching_for(config, name)
            model.max_batch_size = batching.max_batch_size
            model.max_batch_delay_s = batching.max_batch_delay_ms / 1000.0
        specs = plan_workers([n for n, s in self.models.items() if s.archive], config.gpus,
                             config.gpu, config.workers_per_model, config.threads_per_worker)
        self.pool = WorkerPool(specs, archives, worker_endpoint,
                               {n: m.max_batch_size for n, m in self.models.items()},
                               config.heartbeat_interval_s, config.log_level,
                               {n: service_for(config, n) for n in self.models},
                               fork_server=(run_dir / "forkserver.sock"
                                            if config.fork_workers else None),
                               batch_memory_mb=config.batch_memory_mb,
                               worker_args=["--max-reply-bytes", str(config.max_reply_bytes),
                                            "--max-frame-bytes",
                                            str(max_frame_bytes(config))])
        self.context = zmq.Context()
        self.frontends = self._bind(frontend_endpoint, max_frame_bytes(config))
        self.backend = self._bind(worker_endpoint, max_reply_frame_bytes(config))
        # Management commands only from the management routes, on a socket of their own:
        # a frontend's request socket cannot register models.
        self.management = self._bind(management_endpoint, MANAGEMENT_FRAME_BYTES)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.poller = zmq.Poller()
        self.poller.register(self.backend, zmq.POLLIN)
        self.poller.register(self.frontends, zmq.POLLIN)
        self.poller.register(self.management, zmq.POLLIN)
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.next_heartbeat = 0.0
        self.next_housekeeping = 0.0
        self.registry = Registry(run_dir)
        self._replay_registrations()

    def _replay_registrations(self) -> None:
        """Models a previous broker had registered at run time are registered again."""
        for name, entry in self.registry.load().items():
            if name in self.models:
                log.warning("not restoring registered model %s: a configured model has its "
                            "name", name)
                self.registry.drop(name)
                continue
            try:
                folder = Path(typed_field(entry, "folder", str))
                self._add_model(name, folder, entry)
            except (MXServeError, *MALFORMED) as exc:
                log.warning("not restoring registered model %s: %s", name,
                            getattr(exc, "message", exc))
                self.registry.drop(name)
                continue
            log.info("restored model %s, registered before this broker started", name)

    def _remember(self, name: str) -> None:
        """Save a run-time model's folder and settings for a broker that restarts."""
        model = self.models[name]
        if model.archive is not None:
            self.registry.put(name, {
                "folder": str(model.archive.root), "workers": self.pool.total(name),
                "max_batch_size": model.max_batch_size,
                "max_batch_delay_ms": model.max_batch_delay_s * 1000.0})

    def _load_archives(self, extract_root: Path) -> dict[str, Path]:
        """Extract each archive once here; workers read the extracted folder."""
        folders = {}
        for entry in self.config.models:
            name, path = parse_model_spec(entry)
            try:
                archive = load_archive(path, extract_root, name=name)
            except MXServeError as exc:
                label = name or path
                log.error("model %s cannot be served: %s", label, exc.message)
                self.models[label] = ModelState(archive=None, error=exc.message)
                continue
            if archive.name in self.models:
                raise InvalidInput(f"two models are named {archive.name!r}")
            self.models[archive.name] = ModelState(archive=archive)
            folders[archive.name] = archive.root
        return folders

    def _bind(self, endpoint: str, max_frame: int) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.LINGER, 0)
        # A peer sending a larger frame is disconnected before the broker buffers it.
        socket.setsockopt(zmq.MAXMSGSIZE, max_frame)
        # Bounded by our own queues, not ZeroMQ's: never let a ROUTER drop silently.
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.bind(endpoint)
        return socket

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            self.stop_requested = True  # no logging here: just queue the request

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the poller
        signal.set_wakeup_fd(self.wake_w)
        log.info("broker up: %d model(s), %d worker(s) planned; images decoded by the %s",
                 len(self.models), len(self.pool.workers),
                 "workers" if self.config.images_decoded_by_workers else "frontends")
        try:
            while True:
                now = time.monotonic()
                if self.stop_requested and not self.draining:
                    self._begin_drain(now)
                if self.draining and (not self._in_flight() or now >= self.drain_deadline):
                    break
                events = dict(self.poller.poll(self._poll_timeout_ms(now)))
                signalled = self.wake_r in events
                if signalled:
                    os.read(self.wake_r, 4096)
                if self.backend in events:
                    self.receive_from_workers()
                if self.frontends in events:
                    self.receive_from_frontends()
                if self.management in events:
                    self.receive_management()
                now = time.monotonic()
                # Housekeeping when a timer or a signal (a child exited) woke us, else at most
                # every HOUSEKEEPING_S: run per message it cost more than the routing did.
                if signalled or not events or now >= self.next_housekeeping:
                    self.next_housekeeping = now + HOUSEKEEPING_S
                    self.reap_children(now)
                    self.expire(now)
                    self.purge_silent_workers(now)
                    self.kill_stuck_loads(now)
                    self.finish_removals()
                    self.update_gauges()
                    self.heartbeat(now)
                    if not self.draining:
                        self.pool.start_due(now)
                self.dispatch(now)
        finally:
            self._shutdown()

    def _begin_drain(self, now: float) -> None:
        self.draining = True
        self.drain_deadline = now + self.config.drain_timeout_s
        log.info("draining: %d request(s) in flight or queued", self._in_flight())

    def _in_flight(self) -> int:
        return sum(len(m.queue) for m in self.models.values()) + sum(
            len(w.batch) for w in self.workers.values())

    def _shutdown(self) -> None:
        for model in self.models.values():
            while model.queue:
                self._fail(model.queue.popleft(), ServiceUnavailable("the server is shutting down"))
        for worker in self.workers.values():
            for pending in worker.batch.values():
                self._fail(pending, ServiceUnavailable("the server is shutting down"))
            self._send_worker(worker.identity, Message(Kind.DISCONNECT))
        self.pool.stop(timeout_s=WORKER_STOP_S)
        self.frontends.close(linger=200)
        self.management.close(linger=200)
        self.backend.close(linger=0)
        self.context.term()
        log.info("broker stopped")

    def _poll_timeout_ms(self, now: float) -> float:
        wake = [self.next_heartbeat]
        if self.draining:
            wake.append(self.drain_deadline)
        for model in self.models.values():
            if model.queue:
                wake.append(min(p.deadline for p in model.queue))
                if model.idle and model.max_batch_delay_s:
                    wake.append(model.queue[0].received + model.max_batch_delay_s)
        for worker in self.workers.values():
            if worker.batch:
                wake.append(worker.batch_deadline)
        restart = self.pool.next_restart()
        if restart is not None:
            wake.append(restart)
        return max(0.0, min(wake) - now) * 1000.0 + 1.0

    # -- workers -----------------------------------------------------------------------

    def _drain(self, socket: zmq.Socket, peer: str) -> Iterator[tuple[bytes, Message]]:
        """Every message waiting on a ROUTER socket, decoded; malformed ones are logged and
        dropped, never raised."""
        while has_message(socket):
            try:
                identity, *frames = recv_frames(socket, NOBLOCK)
            except zmq.Again:
                return
            try:
                message = from_frames(frames)
            except MXServeError as exc:
                log.warning("dropped a malformed message from a %s: %s", peer, exc.message)
                continue
            yield identity.bytes, message

    def receive_from_workers(self) -> None:
        for identity, message in self._drain(self.backend, "worker"):
            self.on_worker_message(identity, message)

    def on_worker_message(self, identity: bytes, message: Message) -> None:
        """One message from a worker; one with a wrong field is logged and dropped."""
        try:
            self._on_worker_message(identity, message)
        except MALFORMED as exc:
            log.warning("dropped a malformed %s from a worker: %s", message.kind.name,
                        getattr(exc, "message", exc))

    def _on_worker_message(self, identity: bytes, message: Message) -> None:
        now = time.monotonic()
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        if message.kind == Kind.READY:
            self._on_ready(identity, message, now)
        elif message.kind == Kind.REPLY and worker is not None:
            self._on_reply(worker, message, now)
        elif message.kind == Kind.DISCONNECT and worker is not None:
            self._remove_worker(worker, "it disconnected")
        elif message.kind == Kind.DISCONNECT and "load_error" in message.fields:
            self._on_load_error(message)
        elif worker is None and message.kind != Kind.DISCONNECT:
            # A worker we forgot (we restarted, or it was presumed dead): ask it to
            # re-register instead of guessing its state.
            self._send_worker(identity, Message(Kind.DISCONNECT, {"reason": "unknown"}))

    def _on_ready(self, identity: bytes, message: Message, now: float) -> None:
        name = typed_field(message.fields, "model", str, "")
        model = self.models.get(name)
        if model is None or model.archive is None:
            log.warning("worker %r is READY for unknown model %r; sending it away", identity,
                        name)
            self._send_worker(identity, Message(Kind.DISCONNECT, {"reason": "unknown model"}))
            return
        old = self.workers.get(identity)
        if old is not None:
            self._remove_worker(old, "it re-registered")
        fields = message.fields
        worker = WorkerState(identity=identity, model=name,
                             device=typed_field(fields, "device", str, "?"),
                             pid=typed_field(fields, "pid", int, 0),
                             max_batch_size=max(1, typed_field(fields, "max_batch_size", int, 1)),
                             threads=max(0, typed_field(fields, "threads", int, 0)), last_seen=now)
        self.workers[identity] = worker
        self.pool.mark_ready(worker.pid)
        model.workers.add(identity)
        model.idle.append(identity)
        log.info("worker %s ready for %s on %s (pid %d)", identity.decode(errors="replace"),
                 name, worker.device, worker.pid)

    def _on_load_error(self, message: Message) -> None:
        """A worker about to exit 3 says why its model cannot load: that is the model's
        error in the catalog (instead of "see the worker log")."""
        name = str(message.fields.get("model", ""))
        model = self.models.get(name)
        if model is None or model.workers:
            return
        reason = str(message.fields["load_error"])[:500]
        self.pool.failed[name] = reason
        if model.error:  # the exit was reaped first
            model.error = reason

    def _on_reply(self, worker: WorkerState, message: Message, now: float) -> None:
        inference_ms = typed_field(message.fields, "inference_ms", (int, float), 0.0)
        decode_ms = typed_field(message.fields, "decode_ms", (int, float), 0.0)
        worker_ms = round((now - worker.batch_started) * 1000.0, 3)  # the hop and inference
        for item in message.items:
            pending = worker.batch.pop(item.id, None)
            if pending is None:
                continue  # already answered (expired, or the worker was presumed dead)
            self._send_frontend(pending.frontend, Message(Kind.REPLY, {
                "batch_size": len(message.items), "inference_ms": inference_ms,
                "decode_ms": decode_ms, "worker_ms": worker_ms,
                "queue_ms": round((worker.batch_started - pending.received) * 1000.0, 3),
            }, [Item(pending.item.id, dict(item.fields), item.arrays)]))
        for pending in worker.batch.values():
            self._fail(pending, ServiceUnavailable("the worker answered without this request"))
        worker.batch = {}
        if not worker.retiring:
            self.models[worker.model].idle.append(worker.identity)

    def _remove_worker(self, worker: WorkerState, why: str) -> None:
        """Forget a worker; its batch goes back to the head of the queue once."""
        self.workers.pop(worker.identity, None)
        model = self.models.get(worker.model)
        if model is None:  # its model was unregistered meanwhile
            return
        model.workers.discard(worker.identity)
        if worker.identity in model.idle:
            model.idle.remove(worker.identity)
        if worker.batch:
            log.warning("worker %s lost with %d request(s) (%s)", worker.identity.decode(
                errors="replace"), len(worker.batch), why)
        for pending in reversed(list(worker.batch.values())):
            pending.attempts += 1
            if pending.attempts >= 2:
                self._fail(pending, ServiceUnavailable("the request was lost with two workers"))
            else:
                model.queue.appendleft(pending)
        worker.batch = {}

    def reap_children(self, now: float) -> None:
        for managed, pid, code in self.pool.reap(now):
            for worker in list(self.workers.values()):
                if worker.pid == pid:
                    self._remove_worker(worker, f"exit code {code}")
            if managed.retired or managed.spec.model not in self.models:
                continue
            if managed.restart_at is not None:
                metrics.WORKER_RESTARTS.labels(managed.spec.model).inc()
            if managed.spec.model in self.pool.failed:
                model = self.models[managed.spec.model]
                model.error = self.pool.failed[managed.spec.model]
                self._fail_queue(model, ServiceUnavailable(f"model {managed.spec.model} cannot "
                                                           "load", retry_after_s=30))
            elif not self.models[managed.spec.model].workers:
                self._fail_queue(self.models[managed.spec.model],
                                 ServiceUnavailable("no worker is ready for this model"))

    # -- management (MANAGE from a frontend's management listener) ------------------------

    def _on_manage(self, fields: dict[str, Any]) -> dict[str, Any]:
        """register / unregister / scale; the reply item's fields: a result or an error."""
        try:
            op = fields.get("op")
            name = str(fields.get("name", ""))
            if op == "register":
                result = self._register(name, fields)
            elif op == "unregister":
                result = self._unregister(name)
            elif op == "scale":
                result = self._scale(name, fields)
            else:
                raise InvalidInput(f"unknown management operation {op!r}")
        except MXServeError as exc:
            return {"error": {"type": exc.type, "message": exc.message}}
        except MALFORMED as exc:
            log.warning("refused a malformed management command: %s", exc)
            return {"error": {"type": InvalidInput.type,
                              "message": "malformed management command"}}
        return {"result": result}

    def _known(self, name: str) -> ModelState:
        model = self.models.get(name)
        if model is None or model.removing:
            raise ModelNotFound(f"model {name!r} is not registered")
        return model

    def _register(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """An archive the management listener has already extracted (the broker's loop
        never unzips): read its folder, then start its workers. A refused one's folder
        is removed."""
        folder = Path(typed_field(fields, "folder", str, ""))
        try:
            result = self._add_model(name, folder, fields)
        except BaseException:
            self._discard_extraction(folder)
            raise
        self._remember(name)
        return result

    def _add_model(self, name: str, folder: Path, fields: dict[str, Any]) -> dict[str, Any]:
        if name in self.models:
            raise InvalidInput(f"a model named {name!r} is already registered"
                               + (" (still being removed)" if self.models[name].removing
                                  else ""))
        specs = self._plan(name, _worker_count(fields.get("workers")
                                               or self.config.workers_per_model))
        archive = load_archive(folder, name=name)
        batching = batching_for(self.config, name)
        model = ModelState(archive=archive,
                           max_batch_size=_batch_size(fields.get("max_batch_size")
                                                      or batching.max_batch_size),
                           max_batch_delay_s=_batch_delay_ms(fields.get(
                               "max_batch_delay_ms", batching.max_batch_delay_ms)) / 1000.0)
        self.models[name] = model
        self.pool.add(name, specs, archive.root, model.max_batch_size,
                      service_for(self.config, name))
        log.info("registered model %s from %s", name, archive.root)
        return self.catalog()["models"][name]

    def _plan(self, name: str, count: int) -> list[Any]:
        """`count` more CPU workers for a model (with GPUs: one per GPU, as at start)."""
        if self.config.gpus or self.config.gpu >= 0:
            return plan_workers([name], self.config.gpus, self.config.gpu)
        threads = self.config.threads_per_worker or max(
            1, (os.cpu_count() or 1) // max(1, len(self.pool.workers) + count))
        return plan_workers([name], workers_per_model=count, threads_per_worker=threads)

    def _unregister(self, name: str) -> dict[str, Any]:
        """Refuse new requests (404), let queued and running ones finish, then stop its
        workers (finish_removals)."""
        model = self._known(name)
        model.removing = True
        log.info("unregistering model %s: %d queued, draining", name, len(model.queue))
        return {"name": name, "status": "removing"}

    def finish_removals(self) -> None:
        for name, model in list(self.models.items()):
            busy = any(self.workers[w].batch for w in model.workers if w in self.workers)
            if not model.removing or model.queue or busy:
                continue
            for identity in list(model.workers):
                self.workers.pop(identity, None)
            self.pool.retire(name)
            del self.models[name]
            self.registry.drop(name)
            if model.archive is not None:
                self._discard_extraction(model.archive.root)
            log.info("model %s removed", name)

    def _discard_extraction(self, folder: Path) -> None:
        """Remove an archive's extracted folder once no model serves from it (only ours:
        folders under the run directory; a model served from its own folder is kept)."""
        if folder.parent != self.extract_root:
            return
        if any(m.archive is not None and m.archive.root == folder
               for m in self.models.values()):
            return
        shutil.rmtree(folder, ignore_errors=True)

    def _scale(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        model = self._known(name)
        if fields.get("max_batch_size") is not None:
            size = _batch_size(fields["max_batch_size"])
            # Running workers bound their executors up to their launch size: a larger size
            # applies to workers started from now on.
            model.max_batch_size = size
            self.pool.max_batch_size[name] = size
        if fields.get("max_batch_delay_ms") is not None:
            model.max_batch_delay_s = _batch_delay_ms(fields["max_batch_delay_ms"]) / 1000.0
        if fields.get("workers") is not None:
            wanted, current = _worker_count(fields["workers"]), self.pool.total(name)
            if wanted > current:
                self.pool.add(name, self._plan(name, wanted - current))
            elif wanted < current:
                idle = frozenset(self.workers[i].pid for i in model.idle if i in self.workers)
                for pid in self.pool.retire(name, current - wanted, prefer=idle):
                    for worker in self.workers.values():
                        if worker.pid == pid:
                            worker.retiring = True
                            if worker.identity in model.idle:
                                model.idle.remove(worker.identity)
        log.info("model %s: %d worker(s), batches of %d, delay %.1f ms", name,
                 self.pool.total(name), model.max_batch_size, model.max_batch_delay_s * 1000)
        if name in self.registry.entries:
            self._remember(name)
        return self.catalog()["models"][name]

    def update_gauges(self) -> None:
        """Queue depths and ready workers, for /metrics (every housekeeping tick: cheap,
        and never on the per-request path)."""
        for name, model in self.models.items():
            metrics.QUEUE_DEPTH.labels(name).set(len(model.queue))
            metrics.WORKERS_READY.labels(name).set(len(model.workers))
            metrics.WORKERS_PLANNED.labels(name).set(self.pool.total(name) if model.archive
                                                     else 0)

    def kill_stuck_loads(self, now: float) -> None:
        """A worker still not READY after model_load_timeout_s is killed. If its model has
        no ready worker, the model is failed (a load that hung once hangs again) instead of
        restart-looping; otherwise it is restarted like any crashed worker."""
        timeout_s = self.config.model_load_timeout_s
        for managed in self.pool.overdue(now, timeout_s):
            name = managed.spec.model
            if not self.models[name].workers:
                self.pool.failed[name] = f"the model did not finish loading in {timeout_s:g}s"
            log.error("worker %s (pid %d) not ready after %.0fs; killing it", managed.identity,
                      managed.process.pid, timeout_s)
            managed.process.kill()

    def purge_silent_workers(self, now: float) -> None:
        limit = self.config.heartbeat_interval_s * LIVENESS
        for worker in list(self.workers.values()):
            if not worker.batch and now - worker.last_seen > limit:
                log.warning("worker %s silent for %.1fs; presumed dead",
                            worker.identity.decode(errors="replace"), now - worker.last_seen)
                self._remove_worker(worker, "heartbeats stopped")
                self.pool.kill(worker.pid)

    # -- frontends ---------------------------------------------------------------------

    def receive_from_frontends(self) -> None:
        for identity, message in self._drain(self.frontends, "frontend"):
            self.on_frontend_message(identity, message)

    def on_frontend_message(self, identity: bytes, message: Message) -> None:
        """One message from a frontend thread; a malformed one is answered with an error
        (the thread waits for its reply) and dropped."""
        if len(message.items) != 1:
            log.warning("dropped a frontend message with %d items", len(message.items))
            return
        item = message.items[0]
        try:
            if message.kind == Kind.REQUEST:
                self._on_request(identity, message, item)
            elif message.kind == Kind.CATALOG:
                self._send_frontend(identity, Message(Kind.REPLY, {}, [
                    Item(item.id, {"result": self.catalog()})]))
            else:
                raise ProtocolError(f"{message.kind.name} is not taken on this socket")
        except MALFORMED as exc:
            log.warning("refused a malformed %s from a frontend: %s", message.kind.name,
                        getattr(exc, "message", exc))
            self._send_frontend(identity, Message(Kind.REPLY, {}, [Item(item.id, {
                "error": {"type": InvalidInput.type,
                          "message": "malformed message to the broker"}})]))

    def receive_management(self) -> None:
        for identity, message in self._drain(self.management, "management route"):
            if message.kind != Kind.MANAGE or len(message.items) != 1:
                log.warning("dropped a %s with %d items on the management socket",
                            message.kind.name, len(message.items))
                continue
            item = message.items[0]
            self._send_frontend(identity, Message(Kind.REPLY, {}, [
                Item(item.id, self._on_manage(item.fields))]), self.management)

    def _on_request(self, frontend: bytes, message: Message, item: Item) -> None:
        now = time.monotonic()
        name = typed_field(message.fields, "model", str, "")
        model = self.models.get(name)
        budget_s = float(typed_field(item.fields, "budget_ms", (int, float),
                                     self.config.request_timeout_s * 1000))
        if not budget_s > 0:  # NaN and negatives included
            raise ProtocolError("budget_ms must be a positive number")
        pending = Pending(frontend, item, now + min(budget_s / 1000.0,
                                                    self.config.request_timeout_s), now)
        if model is None:
            return self._fail(pending, ModelNotFound(f"model {name!r} is not loaded"))
        if self.draining:
            return self._fail(pending, ServiceUnavailable("the server is shutting down"))
        if model.removing:
            return self._fail(pending, ModelNotFound(f"model {name!r} is being removed"))
        if model.archive is None or not model.workers:
            reason = model.error or "no worker is ready for this model"
            return self._fail(pending, ServiceUnavailable(f"model {name}: {reason}"))
        if len(model.queue) >= self.config.max_queue_size:
            return self._fail(pending, ServiceUnavailable(
                f"model {name}: the queue is full ({self.config.max_queue_size} waiting)"))
        model.queue.append(pending)

    def catalog(self) -> dict[str, Any]:
        models = {}
        for name, model in self.models.items():
            archive = model.archive
            models[name] = {
                "signature": archive.signature.to_dict() if archive else None,
                "ready": len(model.workers),
                "workers": self.pool.total(name) if archive else 0,
                "restarts": self.pool.restarts.get(name, 0),
                "devices": sorted({self.workers[w].device for w in model.workers}),
                "threads_per_worker": next((s.threads for s in self.pool.specs
                                            if s.model == name), 0),
                "max_batch_size": model.max_batch_size,
                # what the ready workers take (each may cap it: batch_memory_mb)
                "worker_max_batch_size": min((self.workers[w].max_batch_size
                                              for w in model.workers), default=0),
                "max_batch_delay_ms": model.max_batch_delay_s * 1000.0,
                "batches": model.batches,
                "mean_batch_size": round(model.batched / model.batches, 3) if model.batches
                else 0.0,
                "queue": len(model.queue),
                "status": ("removing" if model.removing
                           else "failed" if model.error or archive is None
                           else "ready" if model.workers else "loading"),
                "error": model.error,
            }
        return {"models": models, "draining": self.draining}

    # -- scheduling --------------------------------------------------------------------

    def expire(self, now: float) -> None:
        for model in self.models.values():
            if model.queue and min(p.deadline for p in model.queue) <= now:
                kept = deque()
                for pending in model.queue:
                    if pending.deadline <= now:
                        self._fail(pending, DeadlineExceeded(
                            "the request waited in the queue past its deadline"))
                    else:
                        kept.append(pending)
                model.queue = kept
        for worker in list(self.workers.values()):
            if worker.batch and now > worker.batch_deadline:
                log.error("worker %s overran its deadline by %.1fs; killing it",
                          worker.identity.decode(errors="replace"), now - worker.batch_deadline)
                for pending in worker.batch.values():
                    self._fail(pending, DeadlineExceeded("inference did not finish before the "
                                                         "request's deadline"))
                worker.batch = {}
                self._remove_worker(worker, "deadline overrun")
                self.pool.kill(worker.pid)

    def dispatch(self, now: float) -> None:
        """Idle worker + queued requests -> one batch of up to max_batch_size requests. With
        max_batch_delay_ms, a partial batch waits until its oldest request is that old."""
        for name, model in self.models.items():
            while model.queue and model.idle:
                if (model.max_batch_delay_s and len(model.queue) < model.max_batch_size
                        and now - model.queue[0].received < model.max_batch_delay_s):
                    break
                identity = model.idle.popleft()
                worker = self.workers[identity]
                size = min(worker.max_batch_size, model.max_batch_size)
                batch: list[Pending] = []
                while model.queue and len(batch) < size:
                    batch.append(model.queue.popleft())
                # The frontend's item fields (e.g. how to decode its images) with the
                # budget left now.
                items = [Item(p.item.id, {**p.item.fields, "budget_ms": max(
                    0.0, (p.deadline - now) * 1000.0)}, p.item.arrays) for p in batch]
                worker.batch = {p.item.id: p for p in batch}
                model.batches += 1
                model.batched += len(batch)
                metrics.BATCH_SIZE.labels(name).observe(len(batch))
                worker.batch_started = now
                worker.batch_deadline = max(p.deadline for p in batch) + OVERRUN_GRACE_S
                fields: dict[str, Any] = {"model": name}
                worker.threads_in_use = worker.threads
                lent = self._lendable_threads(worker)
                if lent > worker.threads:
                    fields["threads"] = worker.threads_in_use = lent
                if not self._send_worker(identity, Message(Kind.REQUEST, fields, items)):
                    self._remove_worker(worker, "it is unreachable")

    def _lendable_threads(self, worker: WorkerState) -> int:
        if not self.config.lend_idle_cores:
            return worker.threads
        return lendable_threads(worker, self.workers.values(), self.cores)

    def heartbeat(self, now: float) -> None:
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.config.heartbeat_interval_s
        for identity, worker in list(self.workers.items()):
            if not worker.batch:
                self._send_worker(identity, Message(Kind.HEARTBEAT))

    def _fail_queue(self, model: ModelState, error: MXServeError) -> None:
        while model.queue:
            self._fail(model.queue.popleft(), error)

    # -- sending -----------------------------------------------------------------------

    def _fail(self, pending: Pending, error: MXServeError) -> None:
        fields: dict[str, Any] = {"type": error.type, "message": error.message}
        if isinstance(error, ServiceUnavailable):
            fields["retry_after_s"] = error.retry_after_s
        self._send_frontend(pending.frontend, Message(Kind.REPLY, {}, [
            Item(pending.item.id, {"error": fields})]))

    def _send_frontend(self, identity: bytes, message: Message,
                       socket: zmq.Socket | None = None) -> None:
        """A reply to a frontend thread (on the request socket unless `socket` is given)."""
        try:
            send_frames(socket or self.frontends, [identity, *to_frames(message)])
        except zmq.ZMQError as exc:  # EHOSTUNREACH: that frontend thread's socket is gone
            log.info("reply to a departed frontend dropped: %s", exc)

    def _send_worker(self, identity: bytes, message: Message) -> bool:
        try:
            send_frames(self.backend, [identity, *to_frames(message)])
            return True
        except zmq.ZMQError as exc:
            log.warning("send to worker %r failed: %s", identity, exc)
            return False




def _worker_count(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_WORKERS_PER_MODEL:
        raise InvalidInput(f"workers must be an integer between 1 and {MAX_WORKERS_PER_MODEL}")
    return value


def _batch_size(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInput("max_batch_size must be an integer >= 1")
    return value


def _batch_delay_ms(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value <= MAX_BATCH_DELAY_MS:
        raise InvalidInput(f"max_batch_delay_ms must be between 0 and {MAX_BATCH_DELAY_MS:g}")
    return float(value)


def main() -> int:
    try:
        config = load_config()
    except MXServeError as exc:
        print(f"broker: bad configuration: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.log_level, config.log_file, "broker")
    if not config.run_dir:
        log.error("MXSERVE_RUN_DIR must be set (mxserve start sets it)")
        return EXIT_BAD_CONFIG
    for secret in SECRET_ENV:  # the workers, which run archives' code, inherit os.environ
        os.environ.pop(secret, None)
    become_subreaper()  # a dead fork server's workers become ours, and keep serving
    try:
        run_dir = private_dir(config.run_dir)
    except MXServeError as exc:
        log.error("%s", exc.message)
        return EXIT_BAD_CONFIG
    try:
        broker = Broker(config, *broker_endpoints(config, run_dir), run_dir)
    except (MXServeError, zmq.ZMQError) as exc:
        log.error("broker cannot start: %s", getattr(exc, "message", exc))
        return EXIT_BAD_CONFIG
    try:
        broker.run()
    except Exception:
        log.exception("broker crashed")
        return EXIT_CRASH
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
