"""A frontend process's connection to the broker.

Each gunicorn thread gets its own DEALER socket (ZeroMQ sockets are not thread-safe),
created lazily in that thread, so nothing ZeroMQ exists before gunicorn forks; the context
is re-created if the pid changes. A call sends one message with one item and waits for the
reply carrying the same item id; replies to earlier calls that timed out are discarded.
Many threads, many sockets: concurrent requests from one process are multiplexed over the
broker's ROUTER, which routes each reply back to the socket that asked.

A waiting thread must learn at once when the broker dies (its request died with it), but
must not wake up to check: a periodic liveness poll costs every request wake-ups, GIL
hand-offs and preempted model workers (docs/benchmarks.md). So one `BrokerWatch` per
process follows the connection through ZeroMQ's socket monitor and raises a file descriptor
that every waiting thread polls beside its socket.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Mapping

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from mxserve.common.errors import (
    DeadlineExceeded,
    InternalServerError,
    MXServeError,
    ServiceUnavailable,
)
from mxserve.common.protocol import (
    ANSWER,
    RESULT,
    Item,
    Kind,
    Message,
    Request,
    RequestItem,
    fields_of,
    from_frames,
    item_error,
    to_frames,
)
from mxserve.common.transport import NOBLOCK, recv_frames, send_frames

CONNECT_WAIT_MS = 250  # ipc connects in well under a millisecond; tcp on a LAN in a few
CONNECT_WAIT_BROKER_UP_S = 5.0  # a thread's socket on a loaded host, the broker known to be up
# While the watch says the broker is down (or just came back), a waiting thread looks at its
# own connection this often; while it says up, only as a safety net for a missed event.
LIVENESS_CHECK_S = 0.1
SAFETY_CHECK_S = 1.0


class BrokerWatch:
    """Whether this process is connected to the broker, as a flag and a pollable fd.

    A monitored DEALER that never sends follows the connection: on DISCONNECTED a byte goes
    into a pipe (readable = broker gone: every thread polling it wakes), on CONNECTED it is
    taken back. The monitor thread is long-lived and only reads monitor events.
    """

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.up = False
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.write(self._write_fd, b"x")  # down until the first connection
        self._canary = context.socket(zmq.DEALER)
        self._canary.setsockopt(zmq.LINGER, 0)
        self._monitor = self._canary.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._canary.connect(endpoint)
        threading.Thread(target=self._follow, name="broker-watch", daemon=True).start()

    def _follow(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor)["event"]
            except zmq.ZMQError:  # the context is being terminated
                return
            if event == zmq.EVENT_CONNECTED and not self.up:
                os.read(self.fd, 1)  # before the flag: "up" never has a readable fd
                self.up = True
            elif event == zmq.EVENT_DISCONNECTED and self.up:
                self.up = False  # before the byte: a woken thread must see "down"
                os.write(self._write_fd, b"x")


class BrokerClient:
    def __init__(self, endpoint: str, max_reply_bytes: int = 0) -> None:
        """`max_reply_bytes`: ZMQ_MAXMSGSIZE of its sockets (0: no limit)."""
        self.endpoint = endpoint
        self.max_reply_bytes = max_reply_bytes
        self._pid = -1
        self._context: zmq.Context | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._watch: BrokerWatch | None = None

    def _socket(self) -> zmq.Socket:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # first use, or first use after a fork
                    self._context = zmq.Context()
                    self._local = threading.local()
                    self._watch = BrokerWatch(self._context, self.endpoint)
                    self._pid = os.getpid()
        socket = getattr(self._local, "socket", None)
        if socket is None:
            assert self._context is not None
            socket = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            # Queue only on a live connection: with the broker gone, a send fails at once
            # (503) instead of waiting in ZeroMQ's queue for a broker that may never read it.
            socket.setsockopt(zmq.IMMEDIATE, 1)
            if self.max_reply_bytes:
                socket.setsockopt(zmq.MAXMSGSIZE, self.max_reply_bytes)
            socket.connect(self.endpoint)
            assert self._watch is not None  # created with the context
            if not self._connected(socket):
                socket.close(0)
                raise ServiceUnavailable("the model server's broker is not reachable "
                                         "(restarting?)")
            poller = zmq.Poller()  # this socket's replies, and the broker's death
            poller.register(socket, zmq.POLLIN)
            poller.register(self._watch.fd, zmq.POLLIN)
            self._local.socket, self._local.poller = socket, poller
        return socket

    def _connected(self, socket: zmq.Socket) -> bool:
        """Wait once for a new socket's connection (a dead broker never connects): briefly,
        and longer only while the watch's own connection shows the broker is there, since
        a busy host can take a while to connect a thread's socket."""
        assert self._watch is not None
        if socket.poll(CONNECT_WAIT_MS, zmq.POLLOUT):
            return True
        deadline = time.monotonic() + CONNECT_WAIT_BROKER_UP_S
        while self._watch.up and time.monotonic() < deadline:
            if socket.poll(CONNECT_WAIT_MS, zmq.POLLOUT):
                return True
        return False

    def _reset_socket(self) -> None:
        socket = getattr(self._local, "socket", None)
        if socket is not None:
            socket.close(0)
            self._local.socket = None

    def call(self, kind: Kind, fields: Mapping[str, Any], item: Item,
             timeout_s: float) -> Message:
        """Send one item, return the broker's reply message for it."""
        socket = self._socket()
        try:
            send_frames(socket, to_frames(Message(kind, fields, [item])), NOBLOCK)
        except zmq.ZMQError as exc:
            self._reset_socket()
            raise ServiceUnavailable(f"the broker is unreachable: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        watch, poller = self._watch, self._local.poller
        assert watch is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # The socket may hold a late reply; a fresh one starts clean.
                self._reset_socket()
                raise DeadlineExceeded("no answer from the model server in time")
            if watch.up:
                ready = any(polled is socket
                            for polled, _ in poller.poll(min(remaining, SAFETY_CHECK_S) * 1000))
            else:
                ready = socket.poll(min(remaining, LIVENESS_CHECK_S) * 1000)
            if not ready:
                # With IMMEDIATE, no writable pipe means the broker connection dropped: a
                # broker that died took this request with it, so say so now, not at the
                # deadline. (A restarted broker takes longer than one slice to come up.)
                if not socket.poll(0, zmq.POLLOUT):
                    self._reset_socket()
                    raise ServiceUnavailable("the model server's broker went away while "
                                             "handling this request; retry")
                continue
            try:
                reply = from_frames(recv_frames(socket))
            except MXServeError:
                continue
            if reply.items and reply.items[0].id == item.id:
                return reply

    def predict(self, model: str, request_id: str, arrays: dict[str, np.ndarray],
                budget_s: float, wait_s: float, encoded_images: bool = False
                ) -> tuple[bytes, Mapping[str, Any]]:
        """Run one request; return (the service's answer as JSON bytes, reply fields) or
        raise its error. `encoded_images`: its image inputs are still JPEG/PNG bytes, for
        the worker to decode within its own limits."""
        answer, fields = self._request(model, request_id, arrays, wait_s,
                                       RequestItem(budget_s * 1000.0, encoded_images))
        data = answer.arrays.get(ANSWER)
        if not isinstance(data, bytes):
            raise InternalServerError("the worker sent no answer")
        return data, fields

    def infer(self, model: str, request_id: str, arrays: dict[str, np.ndarray],
              budget_s: float, wait_s: float, encoded_images: bool,
              outputs: Mapping[str, int], preprocessed: bool
              ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Run one request for the model's output tensors (`outputs`: name -> class count,
        empty for all); return ({name: array, or JSON bytes of class strings}, reply
        fields) or raise its error."""
        answer, fields = self._request(model, request_id, arrays, wait_s, RequestItem(
            budget_s * 1000.0, encoded_images, dict(outputs), preprocessed))
        return answer.arrays, fields

    def handle(self, model: str, request_id: str, arrays: dict[str, np.ndarray],
               budget_s: float, wait_s: float, parameters: Mapping[str, str],
               headers: Mapping[str, str]) -> tuple[Item, Mapping[str, Any]]:
        """Run one request through an MMS 1.x handler (`arrays`: each value's bytes as
        uint8, `parameters`: their media types); return (the answer item, reply fields)."""
        return self._request(model, request_id, arrays, wait_s, RequestItem(
            budget_s * 1000.0, parameters=dict(parameters), headers=dict(headers)))

    def _request(self, model: str, request_id: str, arrays: dict[str, np.ndarray],
                 wait_s: float, asked: RequestItem) -> tuple[Item, Mapping[str, Any]]:
        reply = self.call(Kind.REQUEST, fields_of(Request(model)),
                          Item(request_id, fields_of(asked), arrays), wait_s)
        answer = reply.items[0]
        error = item_error(answer)
        if error is not None:
            raise error
        return answer, reply.fields

    def manage(self, op: str, fields: Mapping[str, Any], timeout_s: float) -> Any:
        """A management operation (register, unregister, scale); its result or its error."""
        reply = self.call(Kind.MANAGE, {}, Item(uuid.uuid4().hex, {"op": op, **fields}),
                          timeout_s)
        error = item_error(reply.items[0])
        if error is not None:
            raise error
        return reply.items[0].fields.get(RESULT)

    def catalog(self, timeout_s: float) -> dict[str, Any]:
        reply = self.call(Kind.CATALOG, {}, Item(uuid.uuid4().hex), timeout_s)
        error = item_error(reply.items[0])
        if error is not None:
            raise error
        return reply.items[0].fields[RESULT]
