"""The management API: models registered, scaled and removed while serving; /metrics.

Routes exist only on connections accepted by the management listener (gunicorn's worker
records the accepting socket per connection; a Host header could be forged, the socket
cannot) and, when `management_token` is set, only with `Authorization: Bearer <token>`,
compared in constant time and never logged. Elsewhere they are 404.

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

The archive is downloaded (URL prefixes of `model_url_allowlist` only, with timeouts and
`max_archive_bytes`) and extracted safely here, in the frontend process; the broker only
reads the extracted folder, so its loop never stalls on a large unzip.
"""
from __future__ import annotations

import contextlib
import hmac
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from flask import Flask, Response, jsonify, request

from common import metrics
from common.archive import load_archive
from common.config import Config
from common.errors import (InvalidInput, ModelNotFound, MXServeError, PayloadTooLarge,
                           ServiceUnavailable, Unauthorized)
from frontend.admission import listener
from frontend.broker_client import BrokerClient
from frontend.catalog import Catalog

MANAGE_TIMEOUT_S = 10.0
DOWNLOAD_CHUNK = 1 << 20
SUMMARY_KEYS = ("status", "ready", "workers", "devices", "threads_per_worker",
                "max_batch_size", "worker_max_batch_size", "max_batch_delay_ms", "queue",
                "restarts", "batches", "mean_batch_size", "error")


def add_management_routes(app: Flask, config: Config, client: BrokerClient,
                          catalog: Catalog) -> None:
    def guarded(view: Callable[..., Any]) -> Callable[..., Any]:
        def check(**kwargs: Any) -> Any:
            address = listener()
            if not (config.management_port and isinstance(address, tuple)
                    and address[1] == config.management_port):
                raise ModelNotFound("no such route on this listener (see /api-description)")
            if config.management_token:
                given = request.headers.get("Authorization", "").removeprefix("Bearer ")
                if not hmac.compare_digest(given.encode(), config.management_token.encode()):
                    raise Unauthorized("the management API needs the bearer token "
                                       "(Authorization: Bearer ...)")
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

    @app.post("/models")
    @guarded
    def register_model() -> Any:
        body = _json_body()
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidInput("name must be a string")
        with _archive_source(body, config) as source:
            extract_root = Path(config.run_dir or tempfile.gettempdir()) / "models"
            archive = load_archive(source, extract_root, name=name)
        client.manage("register", {"name": archive.name, "folder": str(archive.root),
                                   **_settings(body)}, MANAGE_TIMEOUT_S)
        catalog.fetch()  # this process routes the new model at once; others within 2 s
        return jsonify(one(archive.name)), 201

    @app.put("/models/<name>")
    @guarded
    def scale_model(name: str) -> Any:
        settings = _settings(_json_body())
        if not settings:
            raise InvalidInput("send workers, max_batch_size and/or max_batch_delay_ms")
        client.manage("scale", {"name": name, **settings}, MANAGE_TIMEOUT_S)
        return jsonify(one(name))

    @app.delete("/models/<name>")
    @guarded
    def delete_model(name: str) -> Any:
        client.manage("unregister", {"name": name}, MANAGE_TIMEOUT_S)
        deadline = time.monotonic() + config.drain_timeout_s
        while time.monotonic() < deadline:
            if name not in models():
                catalog.fetch()
                return jsonify(name=name, status="removed")
            time.sleep(0.1)
        return jsonify(name=name, status="removing"), 202


def summary(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **{key: model.get(key) for key in SUMMARY_KEYS}}


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object (Content-Type: application/json)")
    return body


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    settings = {}
    for key, kind in (("workers", int), ("max_batch_size", int), ("max_batch_delay_ms", float)):
        if body.get(key) is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"{key} must be a number")
            settings[key] = kind(value)
    return settings


@contextlib.contextmanager
def _archive_source(body: dict[str, Any], config: Config) -> Iterator[str]:
    """A local path as given, or a download from an allow-listed URL into a temporary
    file that is removed afterwards."""
    path, url = body.get("path"), body.get("url")
    if bool(path) == bool(url):
        raise InvalidInput("send exactly one of path (on this host) and url")
    if path:
        if not isinstance(path, str) or not os.path.exists(path):
            raise InvalidInput(f"no archive at {path!r} on the server")
        yield path
        return
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidInput("url must be http(s)")
    if not any(url.startswith(prefix) for prefix in config.model_url_allowlist):
        raise InvalidInput("url is not under a prefix of model_url_allowlist")
    downloaded = _download(url, config.max_archive_bytes, config.model_download_timeout_s)
    try:
        yield downloaded
    finally:
        os.unlink(downloaded)


def _download(url: str, cap: int, timeout_s: float) -> str:
    try:
        response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 (allow-listed)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InvalidInput(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from exc
    handle, path = tempfile.mkstemp(suffix=".model")
    try:
        with response, os.fdopen(handle, "wb") as out:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise PayloadTooLarge(f"the archive is {declared} bytes; the limit is {cap}")
            total = 0
            while chunk := response.read(DOWNLOAD_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise PayloadTooLarge(f"the archive is over {cap} bytes")
                out.write(chunk)
    except MXServeError:
        os.unlink(path)
        raise
    except OSError as exc:
        os.unlink(path)
        raise ServiceUnavailable(f"download of {url} failed: {exc}") from exc
    return path
