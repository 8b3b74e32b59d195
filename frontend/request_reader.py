"""Whether the bytes of an HTTP/1.x request received so far hold the whole request.

The gunicorn worker (frontend/gunicorn_worker.py) reads each request on its poller,
without a thread, and hands the connection to a thread only once this says the request is
complete, so a thread never blocks on a slow or stalled client. It is not a parser: when
the bytes are malformed or over a limit it says "complete" and gunicorn's own parser gives
the exact refusal (400, 413, 431).
"""
from __future__ import annotations

from typing import NamedTuple

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Progress(NamedTuple):
    complete: bool
    headers_done: bool = False
    body_length: int = 0  # declared Content-Length, or the bytes of chunks so far
    expects_continue: bool = False  # the client waits for "100 Continue" before its body


def header_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line that ends the headers, or -1."""
    end = buffer.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


def progress(buffer: bytes | bytearray, max_header_bytes: int,
             max_body_bytes: int) -> Progress:
    end = header_end(buffer)
    if end < 0:
        return Progress(complete=len(buffer) > max_header_bytes)
    length, chunked, expects_continue = 0, False, False
    for line in bytes(buffer[:end - 4]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                return Progress(complete=True, headers_done=True)
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"expect":
            expects_continue = value == b"100-continue"
    body = memoryview(buffer)[end:]
    if chunked:
        done, size = _chunks_complete(body, max_body_bytes)
        return Progress(done, True, size, expects_continue and not done)
    done = length <= len(body) or length > max_body_bytes
    return Progress(done, True, length, expects_continue and not done)


def _chunks_complete(body: memoryview, max_body_bytes: int) -> tuple[bool, int]:
    """(all chunks and the trailer section have arrived, chunk bytes so far); over the
    limit or malformed counts as complete (the parser refuses it)."""
    position, total = 0, 0
    data = body.tobytes()
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return len(data) - position > 1024, total  # a size line is never that long
        try:
            size = int(data[position:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            return True, total
        if size == 0:
            return data.find(b"\r\n\r\n", line_end) >= 0 or data.startswith(
                b"\r\n", line_end + 2), total
        total += size
        if total > max_body_bytes:
            return True, total
        position = line_end + 2 + size + 2
        if position > len(data):
            return False, total


def without_expect(buffer: bytes | bytearray) -> bytes:
    """The request without its Expect header, once we have answered it ourselves."""
    end = header_end(buffer)
    lines = bytes(buffer[:end - 4]).split(b"\r\n")
    kept = [line for line in lines if line.partition(b":")[0].strip().lower() != b"expect"]
    return b"\r\n".join(kept) + b"\r\n\r\n" + bytes(buffer[end:])
