"""The management API: models registered, scaled and removed while serving; /metrics.

Every route first passes frontend/management_guard.py: it exists only on the management
listener (404 elsewhere), answers only loopback or configured Host names and same-origin
requests (403), and needs the bearer token (401). Registering and removing models run an
archive's code and are off unless the server was started with --enable-model-api (403).

    GET    /models              every model: status, workers ready/total, devices, batch
                                settings, queue depth, restarts
    GET    /models/<name>
    POST   /models              {"path" | "url", "name"?, "workers"?, "max_batch_size"?,
                                "max_batch_delay_ms"?} -> 201; the model loads (status
                                "loading", then "ready"); its /<name>/predict appears on
                                every frontend process within the catalog's 2 s refresh
    PUT    /models/<name>       {"workers"?, "max_batch_size"?, "max_batch_delay_ms"?}
    DELETE /models/<name>       new requests 404 at once, queued ones finish, then its
                                workers stop -> 200 (202 if still draining after
                                drain_timeout_s)
    GET    /metrics             Prometheus text, every process (common/metrics.py)

A local `path` must resolve inside `model_store`; a `url` must pass the allow-list
(frontend/download.py). The archive is extracted safely here, in the frontend process; the
broker only reads the extracted folder, so its loop never stalls on a large unzip.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
from flask import Flask, Response, jsonify, request

from mxserve.common import metrics
from mxserve.common.archive import ExtractionLimits, load_archive
from mxserve.common.config import Config
from mxserve.common.errors import Forbidden, InvalidInput, ModelNotFound, NotFound
from mxserve.common.management_token import token_of
from mxserve.common.settings import MAX_BATCH_DELAY_MS, MAX_WORKERS_PER_MODEL
from mxserve.common.url_allowlist import parse_allowlist
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.download import download
from mxserve.frontend.management_guard import allowed_host_names, check_host_and_origin, check_token
from mxserve.frontend.request_context import listener

MANAGE_TIMEOUT_S = 10.0
MAX_BATCH_SIZE = 1024
SUMMARY_KEYS = ("status", "ready", "workers", "devices", "threads_per_worker",
                "max_batch_size", "worker_max_batch_size", "max_batch_delay_ms", "queue",
                "restarts", "batches", "mean_batch_size", "error")


def add_management_routes(app: Flask, config: Config, client: BrokerClient,
                          catalog: Catalog) -> None:
    token = token_of(config) if config.management_auth else ""
    hosts = allowed_host_names(config.management_host, config.management_allowed_hosts)
    allowlist = parse_allowlist(config.model_url_allowlist)

    def guarded(view: Callable[..., Any], changes_models: bool = False) -> Callable[..., Any]:
        def check(**kwargs: Any) -> Any:
            address = listener()
            if not (config.management_port and isinstance(address, tuple)
                    and address[1] == config.management_port):
                raise NotFound("no such route on this listener (see /api-description)")
            check_host_and_origin(request.environ, hosts)
            if config.management_auth:
                check_token(request.headers.get("Authorization", ""), token)
            if changes_models and not config.enable_model_api:
                raise Forbidden("registering and removing models is off on this server "
                                "(start it with --enable-model-api)")
            return view(**kwargs)

        check.__name__ = view.__name__
        return check

    def models() -> dict[str, Any]:
        return catalog.fetch().raw["models"]

    def one(name: str) -> dict[str, Any]:
        model = models().get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not registered")
        return summary(name, model)

    @app.get("/metrics")
    @guarded
    def prometheus_metrics() -> Any:
        return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE)

    @app.get("/models")
    @guarded
    def list_models() -> Any:
        return jsonify(models={name: summary(name, m) for name, m in models().items()})

    @app.get("/models/<name>")
    @guarded
    def get_model(name: str) -> Any:
        return jsonify(one(name))

    def register_model() -> Any:
        body = _json_body(REGISTER)
        name = body.get("name")
        with _archive_source(body, config, allowlist) as source:
            extract_root = Path(config.run_dir or tempfile.gettempdir()) / "models"
            archive = load_archive(source, extract_root, name=name, limits=ExtractionLimits(
                max_total_bytes=config.max_archive_bytes))
        client.manage("register", {"name": archive.name, "folder": str(archive.root),
                                   **_settings(body)}, MANAGE_TIMEOUT_S)
        catalog.fetch()  # this process routes the new model at once; others within 2 s
        return jsonify(one(archive.name)), 201

    app.add_url_rule("/models", "register_model", guarded(register_model, True),
                     methods=["POST"])

    @app.put("/models/<name>")
    @guarded
    def scale_model(name: str) -> Any:
        settings = _settings(_json_body(SCALE))
        if not settings:
            raise InvalidInput("send workers, max_batch_size and/or max_batch_delay_ms")
        client.manage("scale", {"name": name, **settings}, MANAGE_TIMEOUT_S)
        return jsonify(one(name))

    def delete_model(name: str) -> Any:
        client.manage("unregister", {"name": name}, MANAGE_TIMEOUT_S)
        deadline = time.monotonic() + config.drain_timeout_s
        while time.monotonic() < deadline:
            if name not in models():
                catalog.fetch()
                return jsonify(name=name, status="removed")
            time.sleep(0.1)
        return jsonify(name=name, status="removing"), 202

    app.add_url_rule("/models/<name>", "delete_model", guarded(delete_model, True),
                     methods=["DELETE"])


def summary(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **{key: model.get(key) for key in SUMMARY_KEYS}}


SETTINGS_PROPERTIES: dict[str, Any] = {
    "workers": {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS_PER_MODEL},
    "max_batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SIZE},
    "max_batch_delay_ms": {"type": "number", "minimum": 0, "maximum": MAX_BATCH_DELAY_MS},
}
REGISTER = jsonschema.Draft7Validator({
    "type": "object", "additionalProperties": False,
    "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 4096},
                   "url": {"type": "string", "minLength": 1, "maxLength": 4096},
                   "name": {"type": "string", "minLength": 1, "maxLength": 128},
                   **SETTINGS_PROPERTIES},
})
SCALE = jsonschema.Draft7Validator({"type": "object", "additionalProperties": False,
                                    "properties": SETTINGS_PROPERTIES})


def _json_body(schema: jsonschema.Draft7Validator) -> dict[str, Any]:
    """The request's JSON object, valid under `schema`; InvalidInput naming the bad key."""
    try:
        body = json.loads(request.get_data(as_text=True), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput("send a JSON object (Content-Type: application/json)") from exc
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object (Content-Type: application/json)")
    error = jsonschema.exceptions.best_match(schema.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise InvalidInput(f"{where + ': ' if where else ''}{error.message}")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in SETTINGS_PROPERTIES if body.get(key) is not None}


@contextlib.contextmanager
def _archive_source(body: dict[str, Any], config: Config,
                    allowlist: Any) -> Iterator[str]:
    """A local archive inside the model store, or a download from an allow-listed URL
    into a temporary file that is removed afterwards."""
    path, url = body.get("path"), body.get("url")
    if bool(path) == bool(url):
        raise InvalidInput("send exactly one of path (in the model store) and url")
    if path:
        yield _in_model_store(path, config.model_store)
        return
    if not allowlist:
        raise InvalidInput("downloads are off on this server (no model_url_allowlist)")
    downloaded = download(url, allowlist, config.max_archive_bytes,
                          config.model_download_timeout_s)
    try:
        yield downloaded
    finally:
        os.unlink(downloaded)


def _in_model_store(path: Any, store: str) -> str:
    """`path` (absolute, or relative to the store) resolved, symlinks included, and
    refused unless it stays inside the store. Messages never say whether a file outside
    the store exists."""
    if not store:
        raise InvalidInput("local paths are off on this server (no model_store); send a "
                           "url, or start it with --model-store DIR")
    if not isinstance(path, str) or "\0" in path or len(path) > 4096:
        raise InvalidInput("path must be a file name in the model store")
    root = os.path.realpath(store)
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root or resolved == root:
        raise InvalidInput("path must be inside the model store")
    if not os.path.exists(resolved):
        raise InvalidInput(f"no archive {os.path.relpath(resolved, root)!r} in the model "
                           "store")
    return resolved
