"""One request to an MMS 1.x handler model, whichever route it came by (/<model>/predict or
/predictions/<model>): its values, the query parameters and the request's headers to the
broker as MMS 1.x hands them to a handler; the answer back with the media type and status
the handler set.
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from mxserve.common.config import FRONTEND_WAIT_MARGIN_S, Config
from mxserve.common.errors import InternalServerError
from mxserve.common.protocol import ANSWER, CONTENT_TYPE, HEADERS, STATUS
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.exchange import Exchange, server_timing
from mxserve.frontend.form import Part
from mxserve.frontend.request_path import Headers

# Hop-by-hop and credential headers stay in the frontend: a handler has no use for them.
WITHHELD_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "connection",
                              "keep-alive", "transfer-encoding", "upgrade"})


class HandlerPredictor:
    """One request to an MMS 1.x handler: its parts to the broker, the answer back."""

    def __init__(self, config: Config, client: BrokerClient) -> None:
        self.config = config
        self.client = client

    def __call__(self, environ: dict[str, Any], exchange: Exchange, headers: Headers,
                 model: str, parts: list[Part]) -> bytes:
        arrays = {p.name: np.frombuffer(p.data, dtype=np.uint8) for p in parts}
        parameters = {p.name: p.content_type for p in parts}  # a repeated name: the last
        parsed = time.monotonic()
        budget_s = max(0.001, self.config.request_timeout_s - exchange.waited_s)
        answer, timing = self.client.handle(model, exchange.wire_id, arrays, budget_s,
                                            budget_s + FRONTEND_WAIT_MARGIN_S, parameters,
                                            request_headers(environ))
        body = answer.arrays.get(ANSWER)
        if not isinstance(body, bytes):
            raise InternalServerError("the worker sent no answer")
        exchange.timing = timing
        exchange.status = answer.fields.get(STATUS, 200)
        headers.append(("Content-Type", str(answer.fields.get(CONTENT_TYPE) or
                                            "application/octet-stream")))
        headers.extend(response_headers(answer.fields.get(HEADERS)))
        headers.append(("Server-Timing", server_timing(exchange, parsed, parsed, timing)))
        return body


# Headers the server owns: a handler's value for one of them would break the framing, the
# connection or the tracing of the answer, so it is not passed on.
SERVER_HEADERS = WITHHELD_HEADERS | {"content-type", "content-length", "server-timing",
                                     "x-request-id", "date", "server", "trailer"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,4096}")


def response_headers(handler_headers: Any) -> list[tuple[str, str]]:
    """The headers a handler set on its answer (context.set_response_header), those that
    are well-formed and not the server's own."""
    if not isinstance(handler_headers, dict):
        return []
    return [(name, value) for name, value in handler_headers.items()
            if isinstance(name, str) and isinstance(value, str)
            and _TOKEN.fullmatch(name) and _VALUE.fullmatch(value)
            and name.lower() not in SERVER_HEADERS]


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by their HTTP names, for context.get_request_header."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").title()
        else:
            continue
        if name.lower() not in WITHHELD_HEADERS:
            headers[name] = str(value)
    return headers
