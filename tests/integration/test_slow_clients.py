"""Slow and greedy clients, with no nginx in front: stalled half-requests hold no thread
and are closed at their deadline, /ping and predictions still answer, and connections
past the cap are refused cleanly."""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.server_harness import Server, eventually

STALLED = 64


@pytest.fixture(scope="module")
def guarded(sample_models):
    with Server([f"digits={sample_models['digits']}"], "--client-header-timeout-s", "3",
                "--client-body-timeout-s", "3", "--max-connections", str(2 * STALLED + 12),
                frontend_workers=1) as server:
        yield server


def stall(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def closed_by_server(sock: socket.socket, timeout_s: float) -> bytes | None:
    """What the server sent before closing the connection, or None if still open."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_stalled_requests_hold_no_thread_and_are_closed_at_their_deadline(guarded,
                                                                          sample_models):
    headers = [stall(guarded.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n")
               for _ in range(STALLED)]
    bodies = [stall(guarded.port, b"POST /digits/predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 100000\r\n\r\n--b\r\n") for _ in range(STALLED)]
    opened = time.monotonic()
    assert requests.get(guarded.url + "/ping", timeout=2).status_code == 200
    image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
    answer = requests.post(guarded.url + "/digits/predict", files={"data": image}, timeout=5)
    assert answer.status_code == 200 and answer.json()["prediction"][0][0]["class"] == "0"
    for sock in headers + bodies:
        left = max(0.1, opened + 3 + 3 - time.monotonic())  # the deadline, plus a poll tick
        received = closed_by_server(sock, left)
        assert received is not None, "a stalled connection was still open past its deadline"
        if received:
            status, _, rest = received.partition(b"\r\n")
            assert status.startswith(b"HTTP/1.1 408")
            assert json.loads(rest.partition(b"\r\n\r\n")[2])["type"] == "RequestTimeout"
        sock.close()
    assert requests.get(guarded.url + "/ping", timeout=2).status_code == 200


def test_connections_past_the_cap_are_refused_with_a_json_503(guarded):
    held = [stall(guarded.port, b"GET /ping HTTP/1.1\r\n") for _ in range(2 * STALLED + 20)]
    try:
        refused = 0
        for sock in held[-20:]:
            received = closed_by_server(sock, 2.0)
            if received and received.startswith(b"HTTP/1.1 503"):
                assert b"max_connections" in received and b"Retry-After: 1" in received
                refused += 1
        assert refused >= 8
    finally:
        for sock in held:
            sock.close()
    # The held ones are closed: room again.
    eventually(lambda: requests.get(guarded.url + "/ping", timeout=2).status_code == 200, 10,
               "/ping answered after the held connections closed")


def test_expect_continue_and_pipelined_requests_still_work(guarded):
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=5)
    sock.sendall(b"POST /digits/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(b"{}")
    reply = closed_or_answer(sock)
    assert b" 100 " not in reply and reply.startswith(b"HTTP/1.1 4")
    sock.close()
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=5)
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    replies = closed_by_server(sock, 5)
    assert replies is not None and replies.count(b"HTTP/1.1 200") == 2
    sock.close()


def closed_or_answer(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    return data


def test_a_refused_oversized_body_is_read_to_its_end_so_the_413_arrives(guarded):
    """A client (or a proxy) that sends its whole body before reading the answer gets the
    413, not a reset: the server reads and drops the rest of a refused body."""
    body = b"\0" * (8 * 1024 * 1024)  # over the default max_body_bytes
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    sock.sendall(b"POST /digits/predict HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    sock.sendall(body)  # a reset would fail this, or the reads below
    answer = closed_by_server(sock, 10)
    assert answer is not None and answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"PayloadTooLarge"' in answer
    assert requests.get(guarded.url + "/ping", timeout=2).status_code == 200
