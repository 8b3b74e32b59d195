"""The Flask app factory gunicorn serves: the routes of a frontend process.

    gunicorn -k gthread 'mxserve.frontend.app:create_app()'   (configured by MXSERVE_* variables)

Routes (docs/design.md, "HTTP API and errors"): POST /<model>/predict (a direct route,
frontend/predict.py), GET /ping and GET / (200 only when every model has a ready worker;
0.4's body shape), GET /api-description, the management routes and custom endpoints. Every
request, whichever route answers it, goes through frontend/request_path.py: one Exchange,
one error answer, X-Request-Id on every response.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from flask import Flask, Response, jsonify, request

from mxserve.common.config import Config, load_config, max_reply_frame_bytes
from mxserve.common.errors import MXServeError
from mxserve.common.images import warm_up
from mxserve.common.logs import setup_logging
from mxserve.common.version import installed_version
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Limits
from mxserve.frontend.handler_request import HandlerPredictor
from mxserve.frontend.management import add_management_routes
from mxserve.frontend.openapi import build_spec
from mxserve.frontend.predict import TensorPredictor, predict_route
from mxserve.frontend.predictions import predictions_routes
from mxserve.frontend.probes import add_probe_routes
from mxserve.frontend.protocol_errors import ERROR_ANSWERS
from mxserve.frontend.request_context import CLIENT_LIMITS_KEY, ClientLimits
from mxserve.frontend.request_path import RequestPath
from mxserve.frontend.v2_inference import V2Inference
from mxserve.frontend.v2_rest import v2_routes


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
    app.config[CLIENT_LIMITS_KEY] = ClientLimits(
        config.client_header_timeout_s, config.client_body_timeout_s,
        config.client_min_body_rate, config.max_connections, config.max_body_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = BrokerClient(config.broker_frontend, max_reply_frame_bytes(config))
    manager = BrokerClient(config.broker_management, max_reply_frame_bytes(config))
    catalog = Catalog(client)
    limits = Limits.of(config)
    warm_up()

    def health() -> tuple[Response, int]:
        try:
            snapshot = catalog.fetch()
        except MXServeError as exc:
            return jsonify(health="unhealthy!", reason=f"broker: {exc.message}"), 503
        raw = snapshot.raw
        statuses = {name: m["status"] for name, m in raw["models"].items()}
        if not snapshot.ready:
            detail: dict[str, Any] = {"models": statuses}
            if raw["draining"]:
                detail["reason"] = "shutting down"
            elif not raw["models"]:
                detail["reason"] = "no models"
            return jsonify(health="unhealthy!", **detail), 503
        return jsonify(health="healthy!"), 200

    app.add_url_rule("/ping", "ping", health)
    app.add_url_rule("/", "root", health)
    add_probe_routes(app, catalog, config.livez_broker_grace_s)

    extra_paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        app.add_url_rule(endpoint.rule, endpoint.operation["operationId"],
                         _json_view(endpoint.view), methods=[endpoint.method.upper()])
        extra_paths.setdefault(endpoint.path, {})[endpoint.method] = endpoint.operation

    add_management_routes(app, config, manager, catalog)

    @app.get("/api-description")
    def api_description() -> Any:
        snapshot = catalog.current()
        return jsonify(description=build_spec(snapshot.signatures, request.host, extra_paths,
                                              snapshot.handlers))

    inference = V2Inference(config, client, catalog, limits)
    tensors, handlers = TensorPredictor(config, client, limits), HandlerPredictor(config, client)
    app.wsgi_app = RequestPath(  # type: ignore[method-assign]
        app, [predict_route(config, catalog, tensors, handlers),
              *predictions_routes(config, catalog, tensors, handlers),
              *v2_routes(inference, catalog, installed_version(), config.max_body_bytes,
                         config.max_json_elements)],
        config.frontend_queue_timeout_s, config.access_log, ERROR_ANSWERS)
    return app


def _json_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """A custom endpoint's return value: dicts and lists become JSON, the rest is Flask's."""
    @functools.wraps(view)
    def wrapped(**path_params: Any) -> Any:
        result = view(**path_params)
        return jsonify(result) if isinstance(result, (dict, list)) else result

    return wrapped
