"""POST /<model>/predict, served as plain WSGI in front of the Flask app.

Flask's request context, URL dispatch, hooks and Response objects, and werkzeug's multipart
parser, were most of the frontend's CPU per prediction (docs/benchmarks.md). For the one
request a model server exists to answer, that is too much, so it skips Flask: this
middleware (installed as `app.wsgi_app`, Flask's documented hook) answers every POST to a
one-segment `/<name>/predict` path that no custom endpoint claims, and hands everything else
to Flask, which keeps the other routes, the 405 for other methods and the error table.
Answers are the same either way: the same JSON bytes (frontend/exchange.py), headers,
access-log line and metrics.
"""
from __future__ import annotations

import logging
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from mxserve.common.config import FRONTEND_WAIT_MARGIN_S, Config
from mxserve.common.errors import InternalServerError, MXServeError
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Limits, decode_inputs
from mxserve.frontend.exchange import (
    Exchange,
    error_answer,
    log_access,
    next_wire_id,
    record_prediction,
    request_id_for,
)
from mxserve.frontend.form import FormLimits, read_fields
from mxserve.frontend.request_context import waited_s

log = logging.getLogger("frontend")

SUFFIX = "/predict"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PredictRoute:
    def __init__(self, app: WSGIApp, config: Config, client: BrokerClient, catalog: Catalog,
                 limits: Limits, custom_rules: Iterable[str] = ()) -> None:
        self.app = app
        self.config = config
        self.client = client
        self.catalog = catalog
        self.limits = limits
        self.form_limits = FormLimits(config.max_body_bytes, config.max_form_parts)
        # Where CPU workers decode images, they get them checked but encoded (setting
        # image_decode), and decode them within their own limits.
        self.workers_decode_images = config.images_decoded_by_workers
        # POST routes of custom endpoints (Flask rule syntax) win over predict, as they
        # would in Flask's own routing.
        rules = [Rule(rule, methods=["POST"]) for rule in custom_rules]
        self.custom_routes = Map(rules).bind("localhost") if rules else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        name = path[1:-len(SUFFIX)] if path.endswith(SUFFIX) else ""
        if (environ.get("REQUEST_METHOD") != "POST" or not name or "/" in name
                or self._claimed_by_custom_endpoint(path)):
            return self.app(environ, start_response)
        wire_id = next_wire_id()
        exchange = Exchange(request_id_for(environ.get("HTTP_X_REQUEST_ID", ""), wire_id),
                            wire_id, "POST", _wsgi_text(path), waited_s=waited_s())
        headers = [("Content-Type", "application/json"), ("X-Request-Id", exchange.request_id)]
        try:
            body = self._predict(environ, exchange, headers)
            status = 200
        except MXServeError as error:
            status, body, extra = error_answer(error, exchange.request_id)
            headers += extra
        except Exception:
            log.exception("request %s failed", exchange.request_id)
            status, body, extra = error_answer(InternalServerError(
                f"internal error; see the server log for request {exchange.request_id}"),
                exchange.request_id)
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        record_prediction(exchange, status)
        log_access(exchange, status, len(body), self.config.access_log)
        return [body]

    def _claimed_by_custom_endpoint(self, path: str) -> bool:
        if self.custom_routes is None:
            return False
        try:
            self.custom_routes.match(path, method="POST")
            return True
        except HTTPException:  # NotFound, MethodNotAllowed
            return False

    def _predict(self, environ: dict[str, Any], exchange: Exchange,
                 headers: list[tuple[str, str]]) -> bytes:
        model = exchange.path[1:-len(SUFFIX)]
        signature = self.catalog.signature(model)
        if signature is None:
            raise self.catalog.not_loaded(model)
        exchange.model = model
        fields = read_fields(environ, self.form_limits, [s.name for s in signature.inputs])
        parsed = time.monotonic()
        encoded = signature.is_image and self.workers_decode_images
        arrays = decode_inputs(signature, fields, self.limits, decode_images=not encoded)
        decoded = time.monotonic()
        # The deadline started when the request was queued for a thread, not now.
        budget_s = max(0.001, self.config.request_timeout_s - exchange.waited_s)
        answer, timing = self.client.predict(model, exchange.wire_id, arrays, budget_s,
                                             budget_s + FRONTEND_WAIT_MARGIN_S, encoded)
        exchange.timing = timing
        # Where the time went, in the standard Server-Timing header (milliseconds).
        headers.append(("Server-Timing", (
            f"parse;dur={(parsed - exchange.started) * 1000:.2f}, "
            f"decode;dur={(decoded - parsed) * 1000 + timing.get('decode_ms', 0):.2f}, "
            f"queue;dur={timing.get('queue_ms', 0):.2f}, "
            f"inference;dur={timing.get('inference_ms', 0):.2f}, "
            f"worker;dur={timing.get('worker_ms', 0):.2f}, "
            f"broker;dur={(time.monotonic() - decoded) * 1000:.2f}, "
            f"batch;desc={timing.get('batch_size', 0)}")))
        return b'{"prediction":' + answer + b"}\n"  # json_bytes' shape, answer not re-encoded


def _wsgi_text(path: str) -> str:
    """PATH_INFO is the path's bytes as latin-1 (PEP 3333); names are UTF-8."""
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path
