"""Requests and workers: admission to a model's queue, batches onto idle workers, deadlines,
liveness, and what becomes of a lost worker's requests.

Rules: a full queue or a model with no live worker answers 503 at once; a request whose
deadline passes while queued is answered 504 and never executed; a worker that overruns
its batch's deadline is killed (504 to its requests) and restarted; a worker that dies
with a batch has those requests re-queued once at the head of the queue (a second loss
is 503).
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Callable

from mxserve.common import metrics
from mxserve.common.config import Config
from mxserve.common.errors import (
    DeadlineExceeded,
    ModelFailed,
    ModelNotFound,
    MXServeError,
    ProtocolError,
    ServiceUnavailable,
)
from mxserve.common.protocol import (
    Disconnect,
    Item,
    Kind,
    Message,
    Ready,
    Reply,
    Request,
    RequestItem,
    error_item,
    fields_of,
    read_fields,
)
from mxserve.worker.broker.handler_metrics import HandlerMetrics
from mxserve.worker.broker.pool import WorkerPool
from mxserve.worker.broker.state import ModelState, Pending, WorkerState, lendable_threads

log = logging.getLogger("broker")

LIVENESS = 3  # missed heartbeats before an idle worker is presumed dead
OVERRUN_GRACE_S = 1.0  # a batch may run this long past its last deadline before the kill

SendToFrontend = Callable[[bytes, Message], None]
SendToWorker = Callable[[bytes, Message], bool]


class Scheduler:
    def __init__(self, config: Config, pool: WorkerPool, models: dict[str, ModelState],
                 to_frontend: SendToFrontend, to_worker: SendToWorker) -> None:
        self.config = config
        self.pool = pool
        self.models = models
        self.workers: dict[bytes, WorkerState] = {}
        self.cores = os.cpu_count() or 1  # what CPU workers share (worker/broker/pool.py)
        self.draining = False
        self.next_heartbeat = 0.0
        self._to_frontend = to_frontend
        self._to_worker = to_worker
        self.handler_metrics = HandlerMetrics()

    # -- requests ----------------------------------------------------------------------

    def admit(self, frontend: bytes, message: Message, now: float) -> None:
        """Queue a frontend's request, or answer it at once with why it cannot be."""
        [item] = message.items
        model_name = read_fields(Request, message.fields).model
        model = self.models.get(model_name)
        asked = read_fields(RequestItem, item.fields)
        if not asked.budget_ms > 0:  # NaN and negatives included
            raise ProtocolError("budget_ms must be a positive number")
        pending = Pending(frontend, item, now + min(asked.budget_ms / 1000.0,
                                                    self.config.request_timeout_s), now,
                          asked=asked)
        if model is None:
            return self.fail(pending, ModelNotFound(f"model {model_name!r} is not loaded"))
        if self.draining:
            return self.fail(pending, ServiceUnavailable("the server is shutting down"))
        if model.removing:
            return self.fail(pending, ModelNotFound(f"model {model_name!r} is being removed"))
        if model.archive is None or model.error:
            return self.fail(pending, ModelFailed(f"model {model_name} failed to load: "
                                                  f"{model.error or 'no archive'}"))
        if not model.workers:
            return self.fail(pending, ServiceUnavailable(
                f"model {model_name}: no worker is ready for this model"))
        if len(model.queue) >= self.config.max_queue_size:
            return self.fail(pending, ServiceUnavailable(
                f"model {model_name}: the queue is full ({self.config.max_queue_size} waiting)"))
        model.queue.append(pending)

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
                items = []
                for p in batch:
                    fields = fields_of(p.asked)
                    fields["budget_ms"] = max(0.0, (p.deadline - now) * 1000.0)
                    items.append(Item(p.item.id, fields, p.item.arrays))
                worker.batch = {p.item.id: p for p in batch}
                model.batches += 1
                model.batched += len(batch)
                metrics.BATCH_SIZE.labels(name).observe(len(batch))
                worker.batch_started = now
                worker.batch_deadline = max(p.deadline for p in batch) + OVERRUN_GRACE_S
                worker.threads_in_use = worker.threads
                lent = self._lendable_threads(worker)
                if lent > worker.threads:
                    worker.threads_in_use = lent
                request = Request(name, lent if lent > worker.threads else 0)
                if not self._to_worker(identity, Message(Kind.REQUEST, fields_of(request),
                                                         items)):
                    self.remove_worker(worker, "it is unreachable")

    def _lendable_threads(self, worker: WorkerState) -> int:
        if not self.config.lend_idle_cores:
            return worker.threads
        return lendable_threads(worker, self.workers.values(), self.cores)

    def expire(self, now: float) -> None:
        """Queued requests past their deadline get 504; a worker past its batch's deadline
        is killed, and its requests get 504."""
        for model in self.models.values():
            if model.queue and min(p.deadline for p in model.queue) <= now:
                kept: deque[Pending] = deque()
                for pending in model.queue:
                    if pending.deadline <= now:
                        self.fail(pending, DeadlineExceeded(
                            "the request waited in the queue past its deadline"))
                    else:
                        kept.append(pending)
                model.queue = kept
        for worker in list(self.workers.values()):
            if worker.batch and now > worker.batch_deadline:
                log.error("worker %s overran its deadline by %.1fs; killing it", worker.name,
                          now - worker.batch_deadline)
                for pending in worker.batch.values():
                    self.fail(pending, DeadlineExceeded("inference did not finish before the "
                                                        "request's deadline"))
                worker.batch = {}
                self.remove_worker(worker, "deadline overrun")
                self.pool.kill(worker.pid)

    def in_flight(self) -> int:
        return sum(len(m.queue) for m in self.models.values()) + sum(
            len(w.batch) for w in self.workers.values())

    def next_wake(self, now: float) -> float:
        """The earliest time something here is due: a heartbeat, a deadline, a partial
        batch's delay, a worker's restart."""
        wake = [self.next_heartbeat]
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
        return min(wake)

    # -- workers -----------------------------------------------------------------------

    def on_worker_message(self, identity: bytes, message: Message, now: float) -> None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        if message.kind == Kind.READY:
            self._on_ready(identity, message, now)
        elif message.kind == Kind.REPLY and worker is not None:
            self._on_reply(worker, message, now)
        elif message.kind == Kind.DISCONNECT and worker is not None:
            self.remove_worker(worker, "it disconnected")
        elif message.kind == Kind.DISCONNECT:
            self._on_load_error(read_fields(Disconnect, message.fields))
        elif worker is None and message.kind != Kind.DISCONNECT:
            # A worker we forgot (we restarted, or it was presumed dead): ask it to
            # re-register instead of guessing its state.
            self._to_worker(identity, Message(Kind.DISCONNECT,
                                              fields_of(Disconnect(reason="unknown"))))

    def _on_ready(self, identity: bytes, message: Message, now: float) -> None:
        ready = read_fields(Ready, message.fields)
        name = ready.model
        model = self.models.get(name)
        if model is None or model.archive is None:
            log.warning("worker %r is READY for unknown model %r; sending it away", identity,
                        name)
            self._to_worker(identity, Message(Kind.DISCONNECT,
                                              fields_of(Disconnect(reason="unknown model"))))
            return
        old = self.workers.get(identity)
        if old is not None:
            self.remove_worker(old, "it re-registered")
        worker = WorkerState(identity=identity, model=name, device=ready.device, pid=ready.pid,
                             max_batch_size=max(1, ready.max_batch_size),
                             threads=max(0, ready.threads), last_seen=now)
        self.workers[identity] = worker
        self.pool.mark_ready(worker.pid)
        model.workers.add(identity)
        model.idle.append(identity)
        log.info("worker %s ready for %s on %s (pid %d)", worker.name, name, worker.device,
                 worker.pid)

    def _on_load_error(self, disconnect: Disconnect) -> None:
        """A worker about to exit 3 says why its model cannot load: that is the model's
        error in the catalog (instead of "see the worker log")."""
        model = self.models.get(disconnect.model)
        if not disconnect.load_error or model is None or model.workers:
            return
        name, reason = disconnect.model, disconnect.load_error[:500]
        self.pool.failed[name] = reason
        if model.error:  # the exit was reaped first
            model.error = reason

    def _on_reply(self, worker: WorkerState, message: Message, now: float) -> None:
        reply = read_fields(Reply, message.fields)
        worker_ms = round((now - worker.batch_started) * 1000.0, 3)  # the hop and inference
        if reply.handler_metrics or reply.handler_metrics_dropped:
            self.handler_metrics.record(worker.model, reply.handler_metrics,
                                        reply.handler_metrics_dropped)
        for item in message.items:
            pending = worker.batch.pop(item.id, None)
            if pending is None:
                continue  # already answered (expired, or the worker was presumed dead)
            timing = {"batch_size": reply.batch_size, "inference_ms": reply.inference_ms,
                      "decode_ms": reply.decode_ms}
            timing["batch_size"] = len(message.items)
            timing["worker_ms"] = worker_ms
            timing["queue_ms"] = round((worker.batch_started - pending.received) * 1000.0, 3)
            self._to_frontend(pending.frontend, Message(Kind.REPLY, timing, [
                Item(pending.item.id, dict(item.fields), item.arrays)]))
        for pending in worker.batch.values():
            self.fail(pending, ServiceUnavailable("the worker answered without this request"))
        worker.batch = {}
        if not worker.retiring:
            self.models[worker.model].idle.append(worker.identity)

    def remove_worker(self, worker: WorkerState, why: str) -> None:
        """Forget a worker; its batch goes back to the head of the queue once."""
        self.workers.pop(worker.identity, None)
        model = self.models.get(worker.model)
        if model is None:  # its model was unregistered meanwhile
            return
        model.workers.discard(worker.identity)
        if worker.identity in model.idle:
            model.idle.remove(worker.identity)
        if worker.batch:
            log.warning("worker %s lost with %d request(s) (%s)", worker.name,
                        len(worker.batch), why)
        for pending in reversed(list(worker.batch.values())):
            pending.attempts += 1
            if pending.attempts >= 2:
                self.fail(pending, ServiceUnavailable("the request was lost with two workers"))
            else:
                model.queue.appendleft(pending)
        worker.batch = {}

    def reap_children(self, now: float) -> None:
        for managed, pid, code in self.pool.reap(now):
            for worker in list(self.workers.values()):
                if worker.pid == pid:
                    self.remove_worker(worker, f"exit code {code}")
            name = managed.spec.model
            if managed.retired or name not in self.models:
                continue
            if managed.restart_at is not None:
                metrics.WORKER_RESTARTS.labels(name).inc()
            if name in self.pool.failed:
                model = self.models[name]
                model.error = self.pool.failed[name]
                self.fail_queue(model, ModelFailed(f"model {name} failed to load: "
                                                   f"{model.error}"))
            elif not self.models[name].workers:
                self.fail_queue(self.models[name],
                                ServiceUnavailable("no worker is ready for this model"))

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
                log.warning("worker %s silent for %.1fs; presumed dead", worker.name,
                            now - worker.last_seen)
                self.remove_worker(worker, "heartbeats stopped")
                self.pool.kill(worker.pid)

    def heartbeat(self, now: float) -> None:
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.config.heartbeat_interval_s
        for identity, worker in list(self.workers.items()):
            if not worker.batch:
                self._to_worker(identity, Message(Kind.HEARTBEAT))

    def shut_down(self) -> None:
        """Every queued and running request is answered 503; every worker is told to go."""
        for model in self.models.values():
            self.fail_queue(model, ServiceUnavailable("the server is shutting down"))
        for worker in self.workers.values():
            for pending in worker.batch.values():
                self.fail(pending, ServiceUnavailable("the server is shutting down"))
            self._to_worker(worker.identity, Message(Kind.DISCONNECT))

    # -- answers -----------------------------------------------------------------------

    def fail_queue(self, model: ModelState, error: MXServeError) -> None:
        while model.queue:
            self.fail(model.queue.popleft(), error)

    def fail(self, pending: Pending, error: MXServeError) -> None:
        self._to_frontend(pending.frontend, Message(Kind.REPLY, {}, [
            error_item(pending.item.id, error)]))
