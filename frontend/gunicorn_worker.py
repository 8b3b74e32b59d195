"""gunicorn's gthread worker with two changes a model server needs.

    gunicorn --worker-class frontend.gunicorn_worker.ModelServerThreadWorker ...

1. Health checks never wait behind predictions. gthread hands every request to one thread
   pool; with all its threads waiting on queued predictions, a load balancer's GET /ping
   would wait behind them and the instance would be marked dead exactly when it is busy.
   Requests whose first bytes are `GET /ping` or `GET / ` go to a small pool of their own
   (the bytes are peeked, not read). A new connection whose request has not arrived yet
   waits on the poller, holding no thread, until it has (gthread would otherwise give it a
   thread that blocks waiting for the first byte, which is also what slow clients exploit).
2. gunicorn's own refusals are JSON. Requests it cannot parse (a request line over
   limit_request_line: 414, headers over limit_request_fields / limit_request_field_size:
   431, malformed request lines, headers or chunks: 400, an unknown transfer coding: 501)
   never reach Flask; gunicorn answers with an HTML page through
   `gunicorn.util.write_error`, which is replaced here (in gunicorn processes only: nothing
   else imports this module) by the DESIGN §4 JSON body with gunicorn's status and message.
3. Waiting for a thread counts. gthread queues readable connections for its threads
   without limit, and the request's deadline used to start only when a thread took it:
   under overload requests waited there far past their deadline while the broker's
   bounded queue, the designed back-pressure, never filled (measured: 1,000 connections
   on resnet18 all answered 200, the last after 64 s). Each request is now timed from the
   moment it is queued for a thread; a predict request that waited longer than
   `frontend_queue_timeout_s` is answered 503 + Retry-After right here, before Flask (a
   shed request must cost next to nothing, or shedding a burst starves the health lane
   of the GIL: /ping p99 went from 31 to 225 ms when Flask answered them), and the app
   takes the wait off the others' deadlines (frontend/admission.py). A first version shed by backlog
   length (2 x threads) instead: at 256 keep-alive connections on digits it shed 96 % of
   requests that would have been served within a second, and the fast 503s, re-sent at
   once, took the CPU: served throughput fell from 290/s to 41/s (scripts/soak.py).

Built on gthread's internals of gunicorn 27 (enqueue_req, pending_conns); setup.py pins
the major version.
"""
from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from common import metrics
from frontend import admission
from common.errors import (HeaderFieldsTooLarge, InternalServerError, InvalidInput,
                           NotImplementedByServer, ServiceUnavailable, URITooLong)

HEALTH_THREADS = 2
SWITCH_INTERVAL_S = 0.002
HEALTH_REQUESTS = (b"GET /ping ", b"GET /ping?", b"GET / ", b"HEAD /ping ", b"HEAD / ")
PEEK_BYTES = max(len(prefix) for prefix in HEALTH_REQUESTS)

TYPE_BY_STATUS = {400: InvalidInput.type, 414: URITooLong.type,
                  431: HeaderFieldsTooLarge.type, 501: NotImplementedByServer.type}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    error_type = TYPE_BY_STATUS.get(status_int) or (
        InvalidInput.type if status_int < 500 else InternalServerError.type)
    metrics.ERRORS.labels(error_type).inc()
    body = json.dumps({"code": status_int, "type": error_type,
                       "message": mesg or reason, "request_id": ""}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error


class ModelServerThreadWorker(ThreadWorker):
    """gthread with a health-check lane, JSON refusals and timed waits for a thread (see the
    module docstring)."""

    def init_process(self) -> None:
        # The accepting thread releases the GIL at every syscall and must win it back from
        # up to `threads` busy request threads; at the default 5 ms switch interval a burst
        # of 1,000 requests held a health check's accept back ~0.6 s (GIL convoy). 1 ms
        # fixed that but cost ~12 % of noop throughput; 2 ms keeps /ping p99 at 38-60 ms in
        # the 1,000-connection test (measured, docs/architecture.md).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS,
                                                      thread_name_prefix="health")
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:  # called on the main thread only
        first = _peek(conn.sock)
        if not first and not conn.initialized and not conn.data_ready:
            self._wait_for_first_bytes(conn)
        elif first.startswith(HEALTH_REQUESTS):
            conn.queued_at = time.monotonic()
            done = self.health_pool.submit(self.handle, conn)
            done.add_done_callback(
                lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
        else:
            conn.queued_at = time.monotonic()
            super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:  # on a pool thread
        now = time.monotonic()
        admission.set_context(now - getattr(conn, "queued_at", now), conn.server)
        return super().handle(conn)

    def _wait_for_first_bytes(self, conn: Any) -> None:
        """gthread's own "deferred" state: on the poller, bounded by the keep-alive time."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_pending_socket_readable, conn))

    def load_wsgi(self) -> None:
        super().load_wsgi()
        timeout_s = getattr(self.wsgi, "config", {}).get(admission.QUEUE_TIMEOUT_KEY)
        if timeout_s is not None:  # our app (create_app) says how long is too long
            self.wsgi = ShedLateRequests(self.wsgi, timeout_s)

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self.health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


class ShedLateRequests:
    """WSGI middleware: a predict request that waited too long for a thread gets its 503
    here, without Flask; everything else goes to the app."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    def __call__(self, environ: dict, start_response: Any) -> Any:
        waited = admission.waited_s()
        if waited <= self.timeout_s or not environ.get("PATH_INFO", "").endswith("/predict"):
            return self.app(environ, start_response)
        metrics.ERRORS.labels(ServiceUnavailable.type).inc()
        body = json.dumps({"code": 503, "type": ServiceUnavailable.type, "message": (
            f"the server is overloaded (this request waited {waited:.1f}s for a frontend "
            "thread); retry"), "request_id": ""}).encode()
        start_response("503 Service Unavailable", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Retry-After", "1")])
        return [body]


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (EAGAIN), or the peer is gone: gthread will find out
        return b""
