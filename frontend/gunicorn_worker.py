"""gunicorn's gthread worker with the changes a model server facing real clients needs.

    gunicorn --worker-class frontend.gunicorn_worker.ModelServerThreadWorker ...

1. A thread gets a connection only once its whole request has arrived. gthread hands a
   connection to a thread at its first byte, and the thread then reads headers and body
   blocking, with no timeout: two clients that send half a request and stall take both
   health threads, and a few dozen take every prediction thread. Here the main thread
   reads every request on its poller (frontend/request_reader.py says when it is
   complete) within `client_header_timeout_s` for the headers and
   `client_body_timeout_s` plus the body's length at `client_min_body_rate` for the body;
   a client that misses its deadline gets 408 and is closed. `Expect: 100-continue` is
   answered here, since the body is read here.
2. Health checks never wait behind predictions. Complete requests for `/ping`, `/`,
   `/livez`, `/readyz` or the v2 health routes (GET or HEAD) go to a small pool of their
   own, so neither a load balancer's check nor a kubelet's probe is queued behind busy
   prediction threads.
3. A bounded number of connections. Past `max_connections` per process a new connection
   is answered 503 + Retry-After and closed, instead of waiting unseen in the backlog.
4. gunicorn's own refusals are JSON. Requests it cannot parse (a request line over
   limit_request_line: 414, headers over limit_request_fields / limit_request_field_size:
   431, malformed request lines, headers or chunks: 400, an unknown transfer coding: 501)
   never reach Flask; gunicorn answers with an HTML page through
   `gunicorn.util.write_error`, which is replaced here (in gunicorn processes only: nothing
   else imports this module) by our JSON error body with gunicorn's status and message.
5. Waiting for a thread counts. gthread queues complete requests for its threads without
   limit. Each request is timed from the moment it is queued; a predict request that
   waited longer than `frontend_queue_timeout_s` is answered 503 + Retry-After before any
   parsing (frontend/request_path.py: a shed request must cost next to nothing, or
   shedding a burst starves the health lane of the GIL), and the app takes the wait off
   the request's deadline (frontend/request_context.py). Shedding by time, not by backlog
   length: a backlog of slow but servable requests is not overload.
6. A body over the limit is refused (413) before it is read, and the rest of it, still
   arriving, is read and thrown away on the poller before the socket closes (bounded in
   bytes and time). Closed with unread data, the socket would send a reset that can
   destroy the 413 on its way: a proxy still sending the body then answers 502.

Built on gthread's internals of gunicorn 27 (enqueue_req, accept, murder_pending,
TConn.parser); pyproject.toml pins the major version.
"""
from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.workers.gthread import TConn, ThreadWorker

from mxserve.common import metrics
from mxserve.common.errors import (
    HeaderFieldsTooLarge,
    InternalServerError,
    InvalidInput,
    NotImplementedByServer,
    RequestTimeout,
    ServiceUnavailable,
    URITooLong,
)
from mxserve.frontend import request_context
from mxserve.frontend.request_reader import CONTINUE, header_end, progress, without_expect

HEALTH_THREADS = 2
SWITCH_INTERVAL_S = 0.002
HEALTH_REQUESTS = tuple(f"{method} {path}{end}".encode()
                        for method in ("GET", "HEAD")
                        for path in ("/ping", "/livez", "/readyz", "/v2/health/live",
                                     "/v2/health/ready")
                        for end in (" ", "?")) + (b"GET / ", b"HEAD / ")
PEEK_BYTES = max(len(prefix) for prefix in HEALTH_REQUESTS)
RECV_BYTES = 256 * 1024
DISCARD_BYTES = 64 * 1024 * 1024  # at most this much of a refused body is read and dropped
DISCARD_S = 5.0  # and for at most this long

TYPE_BY_STATUS = {400: InvalidInput.type, 408: RequestTimeout.type, 414: URITooLong.type,
                  431: HeaderFieldsTooLarge.type, 501: NotImplementedByServer.type,
                  503: ServiceUnavailable.type}


def json_error(status_int: int, reason: str, mesg: str, extra: str = "") -> bytes:
    error_type = TYPE_BY_STATUS.get(status_int) or (
        InvalidInput.type if status_int < 500 else InternalServerError.type)
    metrics.ERRORS.labels(error_type).inc()
    body = json.dumps({"code": status_int, "type": error_type,
                       "message": mesg or reason, "request_id": ""}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, json_error(status_int, reason, mesg))


util.write_error = write_json_error

TOO_LATE = json_error(408, "Request Timeout", "the request did not arrive in time "
                      "(client_header_timeout_s, client_body_timeout_s)")
TOO_MANY = json_error(503, "Service Unavailable", "too many open connections to this "
                      "frontend (max_connections); retry", "Retry-After: 1\r\n")


class ModelServerThreadWorker(ThreadWorker):
    """gthread that hands only complete requests to its threads, with a health-check lane,
    a connection cap, JSON refusals and timed waits for a thread (module docstring)."""

    def init_process(self) -> None:
        self.cfg = SettledConfig(self.cfg)
        # The accepting thread releases the GIL at every syscall and must win it back from
        # up to `threads` busy request threads: a short switch interval keeps health checks
        # prompt during bursts without costing the request threads much.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS,
                                                      thread_name_prefix="health")
        self.limits = request_context.ClientLimits()
        self.max_header_bytes = (self.cfg.limit_request_line + 4 + self.cfg.limit_request_fields
                                 * (self.cfg.limit_request_field_size + 2))
        self.reading: dict[Any, None] = {}  # connections whose request is still arriving
        self.discarding: dict[Any, None] = {}  # refused oversized bodies still arriving
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app_config = getattr(self.wsgi, "config", {})
        self.limits = app_config.get(request_context.CLIENT_LIMITS_KEY, self.limits)

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        if self.nr_conns >= self.limits.max_connections:
            _send_and_close(client, TOO_MANY)
            return
        self.nr_conns += 1
        self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))

    def enqueue_req(self, conn: Any) -> None:  # called on the main thread only
        """Read the connection's next request on the poller; a thread gets it once it has
        all arrived (requests pipelined behind the last one included)."""
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.inbox = bytearray(buffered)
        conn.answered_continue = False
        conn.headers_at = 0.0
        conn.read_deadline = time.monotonic() + self.limits.header_timeout_s
        conn.sock.setblocking(False)
        if not self._arrived(conn):
            self.reading[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self.on_request_bytes, conn))

    def on_request_bytes(self, conn: Any, _sock: Any) -> None:
        data = _received(conn.sock)
        if data is None:
            return
        if not data:  # the client went away
            self._drop(conn)
            return
        conn.inbox += data
        self._arrived(conn)

    def _arrived(self, conn: Any) -> bool:
        """Dispatch the connection if its request is complete; else move its deadline."""
        state = progress(conn.inbox, self.max_header_bytes, self.limits.max_body_bytes)
        if not state.complete:
            if state.headers_done:
                if not conn.headers_at:
                    conn.headers_at = time.monotonic()
                conn.read_deadline = (conn.headers_at + self.limits.body_timeout_s
                                      + state.body_length / self.limits.min_body_rate)
                if state.expects_continue and not conn.answered_continue:
                    conn.answered_continue = True
                    _send(conn.sock, CONTINUE)
            return False
        request = without_expect(conn.inbox) if conn.answered_continue else conn.inbox
        conn.unread_body = 0
        if state.body_length > self.limits.max_body_bytes:  # refused: the rest still comes
            conn.unread_body = state.body_length - (len(conn.inbox) - header_end(conn.inbox))
        conn.inbox = None
        if self.reading.pop(conn, 0) is None:
            self.poller.unregister(conn.sock)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(request)
        conn.data_ready = True  # gthread's handle() must not wait for more bytes
        conn.queued_at = time.monotonic()
        if bytes(request[:PEEK_BYTES]).startswith(HEALTH_REQUESTS):
            done = self.health_pool.submit(self.handle, conn)
            done.add_done_callback(
                lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
        else:
            super().enqueue_req(conn)
        return True

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.read_deadline <= now]:
            self._drop(conn, TOO_LATE if conn.inbox else b"")
        for conn in [c for c in self.discarding if c.read_deadline <= now]:
            self._discarded(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """A connection closing after a refused oversized body reads the rest first."""
        if getattr(conn, "unread_body", 0) > 0 and not _keeps_alive(fs):
            self._discard(conn)
            return
        super().finish_request(conn, fs)

    def _discard(self, conn: Any) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # the answer is out: FIN now
        except OSError:
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        conn.sock.setblocking(False)
        conn.unread_body = min(conn.unread_body, DISCARD_BYTES)
        conn.read_deadline = time.monotonic() + DISCARD_S
        self.discarding[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_discarded_bytes, conn))

    def on_discarded_bytes(self, conn: Any, _sock: Any) -> None:
        data = _received(conn.sock)
        if data is None:
            return
        conn.unread_body -= len(data)
        if not data or conn.unread_body <= 0:
            self._discarded(conn)

    def _discarded(self, conn: Any) -> None:
        del self.discarding[conn]
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        util.close(conn.sock)

    def _drop(self, conn: Any, answer: bytes = b"") -> None:
        if self.reading.pop(conn, 0) is None:
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        _send_and_close(conn.sock, answer)

    def handle(self, conn: Any) -> Any:  # on a pool thread
        now = time.monotonic()
        request_context.set_context(now - getattr(conn, "queued_at", now), conn.server)
        return super().handle(conn)

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self.health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


class SettledConfig:
    """gunicorn's Config as a frontend process reads it: each setting looked up once, then a
    plain attribute. Config resolves every `cfg.name` through a Python __getattr__ (and some
    through properties), dozens of times per request; a forked worker's settings never
    change (a reload forks new workers)."""

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        setattr(self, name, value)
        return value


def _received(sock: socket.socket) -> bytes | None:
    """What a readable non-blocking socket holds: None if nothing after all, b"" if the
    peer closed or the connection failed."""
    try:
        return sock.recv(RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _keeps_alive(fs: Any) -> bool:
    """Whether gthread keeps the connection after this request (its handle()'s result)."""
    try:
        return bool(fs.result()) if not fs.cancelled() else False
    except Exception:
        return False


def _send(sock: socket.socket, data: bytes) -> None:
    """Best effort on a non-blocking socket: a client too slow to take a few hundred bytes
    is not waited for."""
    try:
        sock.send(data)
    except OSError:
        pass


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    if data:
        sock.setblocking(False)
        _send(sock, data)
    util.close(sock)
