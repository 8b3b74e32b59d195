"""When a request has wholly arrived (the gunicorn worker then hands it to a thread)."""
from __future__ import annotations

from mxserve.frontend.request_reader import progress, without_expect

HEAD = 8192
BODY = 1000


def test_headers_and_bodies():
    assert not progress(b"GET /ping HTTP/1.1\r\nHost: x\r\n", HEAD, BODY).complete
    assert progress(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", HEAD, BODY).complete
    partial = progress(b"POST /m/predict HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", HEAD, BODY)
    assert not partial.complete and partial.headers_done and partial.body_length == 10
    assert progress(b"POST / HTTP/1.1\r\ncontent-length:  3\r\n\r\nabc", HEAD, BODY).complete


def test_over_limits_or_malformed_goes_to_the_parser_at_once():
    assert progress(b"GET /" + b"a" * HEAD, HEAD, BODY).complete  # endless headers: 431
    assert progress(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", HEAD, BODY).complete
    assert progress(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HEAD, BODY).complete


def test_chunked_bodies_complete_at_their_last_chunk():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not progress(head + b"3\r\nabc\r\n", HEAD, BODY).complete
    assert not progress(head + b"3\r\nabc\r\n0\r\n", HEAD, BODY).complete
    assert progress(head + b"3\r\nabc\r\n0\r\n\r\n", HEAD, BODY).complete
    assert progress(head + b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", HEAD, BODY).complete
    # "0\r\n\r\n" inside a chunk's data is data, not the end
    assert not progress(head + b"a\r\n0\r\n\r\n01234\r\n", HEAD, BODY).complete
    assert progress(head + b"zz\r\n", HEAD, BODY).complete  # malformed: the parser's 400
    assert progress(head + b"800\r\n" + b"x" * 10, HEAD, BODY).complete  # over the cap


def test_expect_continue_is_noticed_and_removed_once_answered():
    request = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    assert progress(request, HEAD, BODY).expects_continue
    assert not progress(request + b"abc", HEAD, BODY).expects_continue
    assert without_expect(request + b"abc") == (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n"
                                                 b"\r\nabc")
