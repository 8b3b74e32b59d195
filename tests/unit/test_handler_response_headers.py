"""The headers an MMS 1.x handler sets on its answer reach the client only when they are
well-formed and not the server's own."""
from __future__ import annotations

from mxserve.frontend.handler_request import response_headers


def test_well_formed_headers_pass():
    assert response_headers({"X-Echo": "yes", "Cache-Control": "no-store",
                             "Set-Cookie": "a=b"}) == [
        ("X-Echo", "yes"), ("Cache-Control", "no-store"), ("Set-Cookie", "a=b")]


def test_framing_tracing_and_malformed_headers_are_dropped():
    dropped = {"Content-Length": "1", "content-type": "x/y", "Transfer-Encoding": "chunked",
               "Connection": "close", "X-Request-Id": "forged", "Server-Timing": "x;dur=1",
               "X-Split": "a\r\nInjected: yes", "X-Nul": "a\x00b", "Bad Name": "v",
               "X-Long": "v" * 5000, "X-Wide": "\u2603", "": "empty"}
    assert response_headers(dropped) == []
    assert response_headers(["not", "a", "dict"]) == []
    assert response_headers({"X-Ok": 3}) == []  # the worker sends strings only
