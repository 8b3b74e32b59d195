"""gunicorn's gthread worker, answering the errors gunicorn raises itself in our JSON shape.

gunicorn refuses some requests before Flask sees them: a request line over
limit_request_line (414), headers over limit_request_fields / limit_request_field_size
(431), a malformed request line, header or chunk (400), an unknown transfer coding (501).
It answers those with an HTML page; clients of a JSON API get the DESIGN §4 body instead,
with gunicorn's status and message.

    gunicorn --worker-class frontend.gunicorn_worker.JSONErrorThreadWorker ...

gunicorn writes these errors through `gunicorn.util.write_error`; that one function is
replaced, in gunicorn processes only (nothing else imports this module).
"""
from __future__ import annotations

import json
import socket
from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from common.errors import (HeaderFieldsTooLarge, InternalServerError, InvalidInput,
                           NotImplementedByServer, URITooLong)

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


class JSONErrorThreadWorker(ThreadWorker):
    """gthread, unchanged but for the error bodies (see the module docstring)."""
