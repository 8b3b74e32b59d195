"""The broker's poll loop: its sockets, what arrives on each and where it goes, signals,
the drain on SIGTERM, and `main()`.

Three ROUTER sockets, each with ROUTER_MANDATORY (a send to a vanished peer fails loudly
instead of being dropped): frontends (DEALER, one per frontend thread) send REQUEST and
CATALOG; workers (DEALER, one per worker process) send READY, REPLY, HEARTBEAT; the
management routes send MANAGE on a socket of their own. The loop:

    poll -> receive from workers, frontends, management -> dispatch, and every 50 ms
    (or at once on a signal): reap -> expire -> purge silent workers -> kill stuck loads
    -> finish removals -> gauges -> heartbeat -> start due workers

On SIGTERM the broker drains: it refuses new requests, reports unhealthy, lets in-flight
batches finish (bounded by drain_timeout_s), then stops its workers and exits. Signal
handlers only set a flag and wake the poller through a self-pipe.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import zmq

from mxserve.common import metrics
from mxserve.common.child_processes import become_subreaper
from mxserve.common.config import (
    Config,
    broker_endpoints,
    load_config,
    max_frame_bytes,
    max_reply_frame_bytes,
    service_for,
)
from mxserve.common.errors import (
    EXIT_BAD_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    InvalidInput,
    MXServeError,
    ProtocolError,
)
from mxserve.common.logs import setup_logging
from mxserve.common.private_files import private_dir
from mxserve.common.protocol import (
    RESULT,
    Item,
    Kind,
    Message,
    error_item,
    from_frames,
    to_frames,
)
from mxserve.common.settings import SECRET_ENV
from mxserve.common.transport import NOBLOCK, has_message, recv_frames, send_frames
from mxserve.worker.broker.models import ModelRegistry, load_configured
from mxserve.worker.broker.pool import WorkerPool, plan_workers
from mxserve.worker.broker.scheduler import Scheduler
from mxserve.worker.broker.state import MALFORMED, ModelState

log = logging.getLogger("broker")

MANAGEMENT_FRAME_BYTES = 1024 * 1024  # names, paths and numbers only
HOUSEKEEPING_S = 0.05  # reaping, expiry, heartbeats: 20 times a second is plenty
# On stop, workers get SIGTERM and this long before SIGKILL: an idle one exits at once, and
# one still inside a forward after the drain deadline has had its requests answered already.
WORKER_STOP_S = 3.0


class Broker:
    def __init__(self, config: Config, frontend_endpoint: str, worker_endpoint: str,
                 management_endpoint: str, run_dir: Path) -> None:
        self.config = config
        self.draining = False
        self.drain_deadline = 0.0
        self.stop_requested = False
        metrics.forget_dead_processes()  # a previous broker's gauges, if it was killed
        extract_root = run_dir / "models"
        models, folders = load_configured(config, extract_root)
        self.pool = _start_pool(config, models, folders, worker_endpoint, run_dir)
        self.context = zmq.Context()
        self.frontends = self._bind(frontend_endpoint, max_frame_bytes(config))
        self.backend = self._bind(worker_endpoint, max_reply_frame_bytes(config))
        # Management commands only from the management routes, on a socket of their own:
        # a frontend's request socket cannot register models.
        self.management = self._bind(management_endpoint, MANAGEMENT_FRAME_BYTES)
        self.scheduler = Scheduler(config, self.pool, models, self._send_frontend,
                                   self._send_worker)
        self.models = ModelRegistry(config, self.scheduler, self.pool, run_dir, extract_root)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.poller = zmq.Poller()
        for readable in (self.backend, self.frontends, self.management, self.wake_r):
            self.poller.register(readable, zmq.POLLIN)
        self.next_housekeeping = 0.0
        self.models.restore_saved()

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

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            self.stop_requested = True  # no logging here: just queue the request

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the poller
        signal.set_wakeup_fd(self.wake_w)
        log.info("broker up: %d model(s), %d worker(s) planned; images decoded by the %s",
                 len(self.scheduler.models), len(self.pool.workers),
                 "workers" if self.config.images_decoded_by_workers else "frontends")
        try:
            while True:
                now = time.monotonic()
                if self.stop_requested and not self.draining:
                    self._begin_drain(now)
                if self.draining and (not self.scheduler.in_flight()
                                      or now >= self.drain_deadline):
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
                    self.housekeeping(now)
                self.scheduler.dispatch(now)
        finally:
            self._shutdown()

    def housekeeping(self, now: float) -> None:
        self.scheduler.reap_children(now)
        self.scheduler.expire(now)
        self.scheduler.purge_silent_workers(now)
        self.scheduler.kill_stuck_loads(now)
        self.models.finish_removals()
        self.models.update_gauges()
        self.scheduler.heartbeat(now)
        if not self.draining:
            self.pool.start_due(now)

    def _begin_drain(self, now: float) -> None:
        self.draining = self.scheduler.draining = True
        self.drain_deadline = now + self.config.drain_timeout_s
        log.info("draining: %d request(s) in flight or queued", self.scheduler.in_flight())

    def _shutdown(self) -> None:
        self.scheduler.shut_down()
        self.pool.stop(timeout_s=WORKER_STOP_S)
        self.frontends.close(linger=200)
        self.management.close(linger=200)
        self.backend.close(linger=0)
        self.context.term()
        log.info("broker stopped")

    def _poll_timeout_ms(self, now: float) -> float:
        wake = self.scheduler.next_wake(now)
        if self.draining:
            wake = min(wake, self.drain_deadline)
        return max(0.0, wake - now) * 1000.0 + 1.0

    # -- receiving ---------------------------------------------------------------------

    def _receive(self, socket: zmq.Socket, peer: str) -> Iterator[tuple[bytes, Message]]:
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
        for identity, message in self._receive(self.backend, "worker"):
            self.on_worker_message(identity, message)

    def on_worker_message(self, identity: bytes, message: Message) -> None:
        """One message from a worker; one with a wrong field is logged and dropped."""
        try:
            self.scheduler.on_worker_message(identity, message, time.monotonic())
        except MALFORMED as exc:
            log.warning("dropped a malformed %s from a worker: %s", message.kind.name,
                        getattr(exc, "message", exc))

    def receive_from_frontends(self) -> None:
        for identity, message in self._receive(self.frontends, "frontend"):
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
                self.scheduler.admit(identity, message, time.monotonic())
            elif message.kind == Kind.CATALOG:
                self._send_frontend(identity, Message(Kind.REPLY, {}, [
                    Item(item.id, {RESULT: self.models.catalog()})]))
            else:
                raise ProtocolError(f"{message.kind.name} is not taken on this socket")
        except MALFORMED as exc:
            log.warning("refused a malformed %s from a frontend: %s", message.kind.name,
                        getattr(exc, "message", exc))
            self._send_frontend(identity, Message(Kind.REPLY, {}, [error_item(
                item.id, InvalidInput("malformed message to the broker"))]))

    def receive_management(self) -> None:
        for identity, message in self._receive(self.management, "management route"):
            if message.kind != Kind.MANAGE or len(message.items) != 1:
                log.warning("dropped a %s with %d items on the management socket",
                            message.kind.name, len(message.items))
                continue
            item = message.items[0]
            self._send_frontend(identity, Message(Kind.REPLY, {}, [
                Item(item.id, self.models.manage(dict(item.fields)))]), self.management)

    # -- sending -----------------------------------------------------------------------

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


def _start_pool(config: Config, models: dict[str, ModelState], folders: dict[str, Path],
                worker_endpoint: str, run_dir: Path) -> WorkerPool:
    """The pool of the configured models' workers (started by the loop's housekeeping)."""
    specs = plan_workers([n for n, s in models.items() if s.archive], config.gpus,
                         config.gpu, config.workers_per_model, config.threads_per_worker)
    return WorkerPool(specs, folders, worker_endpoint,
                      {n: m.max_batch_size for n, m in models.items()},
                      config.heartbeat_interval_s, config.log_level,
                      {n: service_for(config, n) for n in models},
                      fork_server=(run_dir / "forkserver.sock" if config.fork_workers
                                   else None),
                      batch_memory_mb=config.batch_memory_mb,
                      worker_args=["--max-reply-bytes", str(config.max_reply_bytes),
                                   "--max-frame-bytes", str(max_frame_bytes(config)),
                                   "--max-image-pixels", str(config.max_image_pixels),
                                   "--jpeg-draft" if config.jpeg_draft else "--no-jpeg-draft"])


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
