"""The Flask app factory gunicorn serves: routes, request decoding, the error table in HTTP.

    gunicorn -k gthread 'frontend.app:create_app()'   (configured by MXSERVE_* variables)

Routes (DESIGN §4): POST /<model>/predict, GET /ping and GET / (200 only when every model
has a ready worker; 0.4's body shape), GET /api-description. Every error, ours or
werkzeug's, is the JSON body {"code", "type", "message", "request_id"}; tracebacks go to the
log with the request id, never to the client. Each response carries X-Request-Id.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from common.config import FRONTEND_WAIT_MARGIN_S, Config, load_config
from common.errors import (InternalServerError, InvalidInput, MethodNotAllowed, ModelNotFound,
                           MXServeError, PayloadTooLarge, ServiceUnavailable,
                           UnsupportedMediaType)
from common.logs import setup_logging
from common import metrics
from frontend.admission import QUEUE_TIMEOUT_KEY, waited_s
from frontend.broker_client import BrokerClient
from frontend.catalog import Catalog
from frontend.decode import Field, Limits, decode_inputs, warm_up
from frontend.management import add_management_routes
from frontend.openapi import build_spec

log = logging.getLogger("frontend")
access_log = logging.getLogger("access")

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# werkzeug's own HTTP errors, expressed in our error table.
HTTP_ERRORS: dict[int, type[MXServeError]] = {
    400: InvalidInput, 404: ModelNotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
    415: UnsupportedMediaType}


@dataclass(frozen=True)
class CustomEndpoint:
    """A route added through ServingFrontend.add_endpoint: one OpenAPI path and method."""

    path: str  # OpenAPI form, e.g. /digits/labels or /items/{item_id}
    method: str  # lower case
    operation: dict[str, Any]  # the OpenAPI operation object, with its operationId
    view: Callable[..., Any]

    @property
    def rule(self) -> str:
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)  # /items/{id} -> /items/<id>


def create_app(config: Config | None = None, endpoints: Sequence[CustomEndpoint] = (),
               process_name: str = "frontend") -> Flask:
    config = config or load_config()
    setup_logging(config.log_level, config.log_file, process_name)
    app = Flask("mxserve")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = config.max_form_parts
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_body_bytes
    app.config[QUEUE_TIMEOUT_KEY] = config.frontend_queue_timeout_s
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = BrokerClient(config.broker_frontend)
    catalog = Catalog(client)
    limits = Limits(max_image_pixels=config.max_image_pixels,
                    max_json_depth=config.max_json_depth, jpeg_draft=config.jpeg_draft)
    request_counter = itertools.count()  # next() on it is atomic under the GIL
    warm_up()

    @app.before_request
    def start_request() -> None:
        # The wire id is ours and unique; a client's X-Request-Id is only echoed and logged
        # (two clients sending the same one must not collide in a batch).
        g.wire_id = f"{os.getpid():x}-{next(request_counter):x}"
        client_id = request.headers.get("X-Request-Id", "")
        g.request_id = client_id[:64] if client_id.isprintable() and client_id else g.wire_id
        g.started = time.monotonic()
        g.waited_s = waited_s()  # late ones were shed before Flask (gunicorn_worker.py)

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(access_line(response))
        if request.endpoint == "predict":
            record_prediction(response)
        return response

    @app.post("/<model>/predict")
    def predict(model: str) -> Any:
        signature = catalog.signature(model)
        if signature is None:
            raise ModelNotFound(f"model {model!r} is not loaded; see /api-description")
        g.model = model  # a served model's name: safe as a log field and a metric label
        if request.mimetype not in FORM_TYPES:
            raise UnsupportedMediaType(
                f"send multipart/form-data with field(s) "
                f"{[s.name for s in signature.inputs]}, not {request.mimetype or 'no body'}")
        fields = [Field(name, f.read(), True) for name, f in request.files.items(multi=True)]
        fields += [Field(name, value, False) for name, value in request.form.items(multi=True)]
        parsed = time.monotonic()
        arrays = decode_inputs(signature, fields, limits)
        decoded = time.monotonic()
        # The deadline started when the request was queued for a thread, not now.
        budget_s = max(0.001, config.request_timeout_s - g.waited_s)
        result, timing = client.predict(model, g.wire_id, arrays, budget_s,
                                        budget_s + FRONTEND_WAIT_MARGIN_S)
        g.timing = timing
        response = jsonify(prediction=result)
        # Where the time went, in the standard Server-Timing header (milliseconds).
        response.headers["Server-Timing"] = ", ".join([
            f"parse;dur={(parsed - g.started) * 1000:.2f}",
            f"decode;dur={(decoded - parsed) * 1000:.2f}",
            f"queue;dur={timing.get('queue_ms', 0):.2f}",
            f"inference;dur={timing.get('inference_ms', 0):.2f}",
            f"broker;dur={(time.monotonic() - decoded) * 1000:.2f}",
            f"batch;desc={timing.get('batch_size', 0)}"])
        return response

    def health() -> tuple[Response, int]:
        try:
            snapshot = catalog.fetch()
        except MXServeError as exc:
            return jsonify(health="unhealthy!", reason=f"broker: {exc.message}"), 503
        raw = snapshot.raw
        statuses = {name: m["status"] for name, m in raw["models"].items()}
        if raw["draining"] or not raw["models"] or any(m["ready"] < 1
                                                       for m in raw["models"].values()):
            detail: dict[str, Any] = {"models": statuses}
            if raw["draining"]:
                detail["reason"] = "shutting down"
            elif not raw["models"]:
                detail["reason"] = "no models"
            return jsonify(health="unhealthy!", **detail), 503
        return jsonify(health="healthy!"), 200

    app.add_url_rule("/ping", "ping", health)
    app.add_url_rule("/", "root", health)

    extra_paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        app.add_url_rule(endpoint.rule, endpoint.operation["operationId"],
                         _json_view(endpoint.view), methods=[endpoint.method.upper()])
        extra_paths.setdefault(endpoint.path, {})[endpoint.method] = endpoint.operation

    add_management_routes(app, config, client, catalog)

    @app.get("/api-description")
    def api_description() -> Any:
        return jsonify(description=build_spec(catalog.signatures(), request.host, extra_paths))

    @app.errorhandler(MXServeError)
    def on_our_error(error: MXServeError) -> tuple[Response, int]:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> tuple[Response, int]:
        cls = HTTP_ERRORS.get(error.code or 500, InternalServerError)
        return error_response(cls(error.description or error.name))

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("request %s failed", g.get("request_id"))
        return error_response(InternalServerError("internal error; see the server log for "
                                                  f"request {g.get('request_id')}"))

    return app


def _json_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """A custom endpoint's return value: dicts and lists become JSON, the rest is Flask's."""
    @functools.wraps(view)
    def wrapped(**path_params: Any) -> Any:
        result = view(**path_params)
        return jsonify(result) if isinstance(result, (dict, list)) else result

    return wrapped


def record_prediction(response: Response) -> None:
    model = g.get("model", "-")
    metrics.PREDICTIONS.labels(model, metrics.status_class(response.status_code)).inc()
    started = g.get("started")
    if started is not None:
        metrics.REQUEST_SECONDS.labels(model).observe(time.monotonic() - started)
    timing = g.get("timing")
    if timing:
        metrics.QUEUE_SECONDS.labels(model).observe(timing.get("queue_ms", 0.0) / 1000.0)
        metrics.INFERENCE_SECONDS.labels(model).observe(
            timing.get("inference_ms", 0.0) / 1000.0)


def access_line(response: Response) -> str:
    """One logfmt line per request: who, what, outcome and where the time went; never the
    payload. Values that could break the format (client ids, odd paths) are quoted."""
    timing = g.get("timing") or {}
    started = g.get("started")
    fields = {
        "request_id": g.get("request_id", "-"), "method": request.method,
        "path": request.path, "model": g.get("model", "-"), "status": response.status_code,
        "bytes": response.content_length or 0, "batch": timing.get("batch_size", "-"),
        "queue_ms": timing.get("queue_ms", "-"), "inference_ms": timing.get("inference_ms", "-"),
        "total_ms": f"{(time.monotonic() - started) * 1000:.2f}" if started else "-"}
    if g.get("wire_id") and g.get("wire_id") != fields["request_id"]:
        fields["wire_id"] = g.wire_id  # the id the broker's and worker's log lines carry
    return " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items())


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:%" for c in text):
        return text
    return json.dumps(text)


def error_response(error: MXServeError) -> tuple[Response, int]:
    metrics.ERRORS.labels(error.type).inc()
    response = jsonify(error.to_dict(g.get("request_id")))
    if isinstance(error, ServiceUnavailable):
        response.headers["Retry-After"] = str(error.retry_after_s)
    if error.status >= 500:
        log.warning("request %s: %s %s", g.get("request_id"), error.type, error.message)
    return response, error.status
