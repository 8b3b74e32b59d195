"""The Flask app factory gunicorn serves: routes, request decoding, the error table in HTTP.

    gunicorn -k gthread 'mxserve.frontend.app:create_app()'   (configured by MXSERVE_* variables)

Routes (docs/design.md, "HTTP API and errors"): POST /<model>/predict (answered before
Flask by frontend/predict.py, the one hot path), GET /ping and GET / (200 only when every
model has a ready worker; 0.4's body shape), GET /api-description. Every error, ours or
werkzeug's, is the JSON body {"code", "type", "message", "request_id"}; tracebacks go to
the log with the request id, never to the client. Each response carries X-Request-Id.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from mxserve.common.config import Config, load_config, max_reply_frame_bytes
from mxserve.common.errors import (
    InternalServerError,
    InvalidInput,
    MethodNotAllowed,
    MXServeError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from mxserve.common.images import warm_up
from mxserve.common.logs import setup_logging
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Limits
from mxserve.frontend.exchange import (
    Exchange,
    error_answer,
    log_access,
    next_wire_id,
    request_id_for,
)
from mxserve.frontend.management import add_management_routes
from mxserve.frontend.openapi import build_spec
from mxserve.frontend.predict import PredictRoute
from mxserve.frontend.request_context import (
    CLIENT_LIMITS_KEY,
    QUEUE_TIMEOUT_KEY,
    ClientLimits,
    waited_s,
)

log = logging.getLogger("frontend")

# werkzeug's own HTTP errors, expressed in our error table.
HTTP_ERRORS: dict[int, type[MXServeError]] = {
    400: InvalidInput, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
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
    app = Flask(__name__)  # its package gives Flask the root path it needs
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = config.max_form_parts
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_body_bytes
    app.config[QUEUE_TIMEOUT_KEY] = config.frontend_queue_timeout_s
    app.config[CLIENT_LIMITS_KEY] = ClientLimits(
        config.client_header_timeout_s, config.client_body_timeout_s,
        config.client_min_body_rate, config.max_connections, config.max_body_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = BrokerClient(config.broker_frontend, max_reply_frame_bytes(config))
    manager = BrokerClient(config.broker_management, max_reply_frame_bytes(config))
    catalog = Catalog(client)
    limits = Limits(max_image_pixels=config.max_image_pixels,
                    max_json_depth=config.max_json_depth, jpeg_draft=config.jpeg_draft,
                    max_tensor_elements=config.max_json_elements)
    warm_up()

    @app.before_request
    def start_request() -> None:
        # The wire id is ours and unique; a client's X-Request-Id is only echoed and logged
        # (two clients sending the same one must not collide in a batch).
        wire_id = next_wire_id()
        g.exchange = Exchange(request_id_for(request.headers.get("X-Request-Id", ""), wire_id),
                              wire_id, request.method, request.path, waited_s=waited_s())

    @app.after_request
    def tag_response(response: Response) -> Response:
        exchange = g.get("exchange")
        if exchange is not None:
            response.headers["X-Request-Id"] = exchange.request_id
            log_access(exchange, response.status_code, response.content_length or 0,
                       config.access_log)
        return response

    @app.post("/<model>/predict")
    def predict(model: str) -> Any:
        # Predictions are answered by PredictRoute before Flask (frontend/predict.py); this
        # rule gives the path its 405 for other methods, and its 404 should a custom
        # endpoint's path shadow it.
        raise catalog.not_loaded(model)

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

    add_management_routes(app, config, manager, catalog)
    app.wsgi_app = PredictRoute(  # type: ignore[method-assign]
        app.wsgi_app, config, client, catalog, limits,
        custom_rules=[e.rule for e in endpoints if e.method == "post"])

    @app.get("/api-description")
    def api_description() -> Any:
        return jsonify(description=build_spec(catalog.signatures(), request.host, extra_paths))

    @app.errorhandler(MXServeError)
    def on_our_error(error: MXServeError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> Response:
        cls = HTTP_ERRORS.get(error.code or 500, InternalServerError)
        return error_response(cls(error.description or error.name))

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception) -> Response:
        request_id = _request_id()
        log.exception("request %s failed", request_id)
        return error_response(InternalServerError("internal error; see the server log for "
                                                  f"request {request_id}"))

    return app


def _json_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """A custom endpoint's return value: dicts and lists become JSON, the rest is Flask's."""
    @functools.wraps(view)
    def wrapped(**path_params: Any) -> Any:
        result = view(**path_params)
        return jsonify(result) if isinstance(result, (dict, list)) else result

    return wrapped


def _request_id() -> str | None:
    exchange = g.get("exchange")
    return exchange.request_id if exchange is not None else None


def error_response(error: MXServeError) -> Response:
    status, body, headers = error_answer(error, _request_id())
    return Response(body, status, headers, mimetype="application/json")
