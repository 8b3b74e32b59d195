"""One request to an MMS 1.x handler model, whichever route it came by (/<model>/predict or
/predictions/<model>): its values, the query parameters and the request's headers to the
broker as MMS 1.x hands them to a handler; the answer back with the media type and status
the handler set.
"""
from __future__ import annotations

import time
import urllib.parse
from typing import Any

import numpy as np

from mxserve.common.config import FRONTEND_WAIT_MARGIN_S, Config
from mxserve.common.errors import InternalServerError, InvalidInput
from mxserve.common.protocol import ANSWER, CONTENT_TYPE, STATUS
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.exchange import Exchange, server_timing
from mxserve.frontend.form import Part
from mxserve.frontend.request_path import Headers

MAX_QUERY_PARAMETERS = 64
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
        parts = query_parts(environ) + parts
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
        headers.append(("Server-Timing", server_timing(exchange, parsed, parsed, timing)))
        return body


def query_parts(environ: dict[str, Any]) -> list[Part]:
    """The query string's parameters, as MMS 1.x passes them to a handler."""
    query = environ.get("QUERY_STRING", "")
    if not query:
        return []
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True,
                                       max_num_fields=MAX_QUERY_PARAMETERS)
    except ValueError as exc:
        raise InvalidInput(f"more than {MAX_QUERY_PARAMETERS} query parameters") from exc
    return [Part(name, value.encode("utf-8"), "") for name, value in pairs]


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
