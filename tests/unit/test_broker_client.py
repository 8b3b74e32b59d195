"""BrokerClient against an in-process ROUTER standing in for the broker: a waiting call
learns of the broker's death from the connection watch, not from periodic wake-ups."""
from __future__ import annotations

import select
import threading
import time

import pytest
import zmq

from mxserve.common.errors import ServiceUnavailable
from mxserve.common.protocol import Item, Kind, Message, from_frames, to_frames
from mxserve.frontend.broker_client import BrokerClient


@pytest.fixture
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/frontends.sock"


def _broker(context: zmq.Context, endpoint: str) -> zmq.Socket:
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    return router


def _wait_for(condition, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_the_watch_follows_the_broker_connection(endpoint):
    context = zmq.Context()
    router = _broker(context, endpoint)
    client = BrokerClient(endpoint)
    try:
        client._socket()
        watch = client._watch
        _wait_for(lambda: watch.up)
        assert select.select([watch.fd], [], [], 0)[0] == []  # up: nothing to wake anyone
        router.close()
        _wait_for(lambda: not watch.up)
        assert select.select([watch.fd], [], [], 0)[0] == [watch.fd]
        router = _broker(context, endpoint)
        _wait_for(lambda: watch.up)
        assert select.select([watch.fd], [], [], 0)[0] == []
    finally:
        router.close()
        context.term()


def test_a_call_waiting_on_a_broker_that_dies_fails_at_once(endpoint):
    context = zmq.Context()
    router = _broker(context, endpoint)
    client = BrokerClient(endpoint)
    client._socket()
    _wait_for(lambda: client._watch.up)
    outcome = {}

    def call() -> None:
        started = time.monotonic()
        try:
            client.call(Kind.REQUEST, {"model": "m"}, Item("r1"), timeout_s=30)
        except ServiceUnavailable as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    caller = threading.Thread(target=call)
    caller.start()
    assert router.poll(2000)  # the request reached the "broker"
    router.recv_multipart()
    time.sleep(1.5)  # longer than the safety slice: waiting, not failing
    assert caller.is_alive()
    router.close()  # the broker dies with the request
    killed = time.monotonic()
    caller.join(5)
    assert isinstance(outcome.get("error"), ServiceUnavailable)
    assert time.monotonic() - killed < 0.5
    context.term()


def test_a_reply_is_returned_to_the_thread_that_asked(endpoint):
    context = zmq.Context()
    router = _broker(context, endpoint)
    client = BrokerClient(endpoint)

    def answer() -> None:
        identity, *frames = router.recv_multipart()
        request = from_frames(frames)
        router.send_multipart([identity, *to_frames(Message(Kind.REPLY, {}, [
            Item(request.items[0].id, {"result": "ok"})]))])

    responder = threading.Thread(target=answer)
    responder.start()
    reply = client.call(Kind.REQUEST, {"model": "m"}, Item("r2"), timeout_s=5)
    responder.join()
    assert reply.items[0].fields == {"result": "ok"}
    router.close()
    context.term()


def test_a_slow_connection_waits_while_the_broker_is_up_and_not_when_it_is_down(
        endpoint, monkeypatch):
    """A thread's new socket on a loaded host can take longer than the first wait to
    connect: with the watch up that is not a dead broker, so it keeps waiting."""
    context = zmq.Context()
    router = _broker(context, endpoint)
    client = BrokerClient(endpoint)
    try:
        client._socket()
        _wait_for(lambda: client._watch.up)
        real_poll = zmq.Socket.poll
        slow = {"left": 3}  # the first three waits see no connection yet

        def poll(self, timeout=None, flags=zmq.POLLIN):
            if flags == zmq.POLLOUT and slow["left"]:
                slow["left"] -= 1
                return 0
            return real_poll(self, timeout, flags)

        monkeypatch.setattr(zmq.Socket, "poll", poll)
        socket = client._context.socket(zmq.DEALER)
        socket.connect(endpoint)
        assert client._connected(socket)
        socket.close(0)
        router.close()
        _wait_for(lambda: not client._watch.up)
        slow["left"] = 1000
        late = client._context.socket(zmq.DEALER)
        late.connect(endpoint)
        started = time.monotonic()
        assert not client._connected(late)  # the broker is down: no long wait
        assert time.monotonic() - started < 1.0
        late.close(0)
    finally:
        router.close()
        context.term()
