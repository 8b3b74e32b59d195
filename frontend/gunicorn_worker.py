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
3. A bounded backlog. gthread queues every readable connection for its threads without
   limit, so under overload requests waited in that queue past their deadline while the
   broker's bounded queue, the designed back-pressure, never filled (measured: 1,000
   connections on resnet18 all answered 200, the last after 64 s). A request arriving when
   2 x `threads` requests already wait for a thread (on top of the `threads` running) is
   marked shed, and the app answers it 503 + Retry-After as soon as a thread takes it,
   without decoding it or asking the broker (frontend/admission.py).

Built on gthread's internals of gunicorn 27 (enqueue_req, pending_conns); setup.py pins
the major version.
"""
from __future__ import annotations

import json
import selectors
import socket
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from frontend import admission
from common.errors import (HeaderFieldsTooLarge, InternalServerError, InvalidInput,
                           NotImplementedByServer, URITooLong)

HEALTH_THREADS = 2
HEALTH_REQUESTS = (b"GET /ping ", b"GET /ping?", b"GET / ", b"HEAD /ping ", b"HEAD / ")
PEEK_BYTES = max(len(prefix) for prefix in HEALTH_REQUESTS)
# Requests that may wait for a thread, per thread, before new ones are shed: 2 lets wrk's
# 128 connections split 2:1 over two processes without a 503, and keeps the last admitted
# request of a 1,000-connection burst on resnet18 within its 30 s deadline (~15 s, measured).
WAITING_PER_THREAD = 2

TYPE_BY_STATUS = {400: InvalidInput.type, 414: URITooLong.type,
                  431: HeaderFieldsTooLarge.type, 501: NotImplementedByServer.type}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    error_type = TYPE_BY_STATUS.get(status_int) or (
        InvalidInput.type if status_int < 500 else InternalServerError.type)
    body = json.dumps({"code": status_int, "type": error_type,
                       "message": mesg or reason, "request_id": ""}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error


class ModelServerThreadWorker(ThreadWorker):
    """gthread with a health-check lane, JSON refusals and a bounded backlog (see the module
    docstring)."""

    def init_process(self) -> None:
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS,
                                                      thread_name_prefix="health")
        super().init_process()

    outstanding = 0  # requests given to the main pool and not finished (main thread only)

    def enqueue_req(self, conn: Any) -> None:  # called on the main thread only
        first = _peek(conn.sock)
        if not first and not conn.initialized and not conn.data_ready:
            self._wait_for_first_bytes(conn)
        elif first.startswith(HEALTH_REQUESTS):
            conn.shed = False
            done = self.health_pool.submit(self.handle, conn)
            done.add_done_callback(
                lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
        else:
            conn.shed = self.outstanding >= self.cfg.threads * (1 + WAITING_PER_THREAD)
            self.outstanding += 1
            done = self.tpool.submit(self.handle, conn)
            done.add_done_callback(
                lambda fut: self.method_queue.defer(self._finished, conn, fut))

    def _finished(self, conn: Any, done: futures.Future) -> None:
        self.outstanding -= 1
        self.finish_request(conn, done)

    def handle(self, conn: Any) -> Any:  # on a pool thread
        admission.set_shed(getattr(conn, "shed", False))
        return super().handle(conn)

    def _wait_for_first_bytes(self, conn: Any) -> None:
        """gthread's own "deferred" state: on the poller, bounded by the keep-alive time."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_pending_socket_readable, conn))

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self.health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (EAGAIN), or the peer is gone: gthread will find out
        return b""
