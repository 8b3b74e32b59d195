"""The management API: models registered, scaled and removed while serving; /metrics.

Every route first passes frontend/management_guard.py: it exists only on the management
listener (404 elsewhere), answers only loopback or configured Host names and same-origin
requests (403), and needs the bearer token (401). Registering and removing models run an
archive's code and are off unless the server was started with --enable-model-api (403).

In MMS 1.x / TorchServe's shape (their query parameters, JSON and status codes); each
write also takes mxserve's JSON body, as the same operation:

    GET    /models?limit=&next_page_token=   {"models": [{"modelName", "modelUrl"}],
                                              "nextPageToken"?}
    GET    /models/<name>[/<version>|/all]   {"modelName", "modelVersion", "isDefault",
                                "modelUrl", "minWorkers", "batchSize", "workers": [{"id",
                                "startTime", "status", "memoryUsage", ...}], ...and
                                mxserve's: status, ready, queue, restarts, error} (/all:
                                a list of every version)
    POST   /models?url=&model_name=&initial_workers=&batch_size=&max_batch_delay=
           &response_timeout=&synchronous=    or {"path" | "url", "name", "workers",
                                "max_batch_size", "max_batch_delay_ms", "synchronous",
                                "timeout_s"} -> 200 once its workers are ready
                                (synchronous), else 202 at once; 409 for a taken name
                                and version. Another version of a loaded model is loaded
                                beside it; the first stays the default.
    PUT    /models/<name>[/<version>]?min_worker=&synchronous=&timeout=
                                or {"workers", ...} -> 200/202
    PUT    /models/<name>/<version>/set-default   routes without a version reach it
    DELETE /models/<name>[/<version>]   new requests 404 at once, queued ones finish, then
                                its workers stop -> 200 (202 if still draining after
                                drain_timeout_s); 409 for the default while others remain

Without a version, a route means the model's default version.
    GET    /metrics             Prometheus text, every process (common/metrics.py)

A local `path` must resolve inside `model_store`; a `url` must pass the allow-list
(frontend/download.py). The archive is extracted safely here, in the frontend process; the
broker only reads the extracted folder, so its loop never stalls on a large unzip.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from flask import Flask, Response, jsonify, request

from mxserve.common import metrics
from mxserve.common.archive import ExtractionLimits, load_archive
from mxserve.common.config import Config
from mxserve.common.errors import (
    ArchiveError,
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
)
from mxserve.common.management_token import token_of
from mxserve.common.protocol import key_parts
from mxserve.common.url_allowlist import parse_allowlist
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.download import download
from mxserve.frontend.management_guard import allowed_host_names, check_host_and_origin, check_token
from mxserve.frontend.management_requests import (
    MAX_PAGE,
    int_parameter,
    registration,
    scaling,
    settings_of,
)
from mxserve.frontend.request_context import listener

MANAGEMENT_PATHS = frozenset({"/models", "/metrics"})  # and everything under /models/
MANAGE_TIMEOUT_S = 10.0
# mxserve's own figures in a description ("workers" is the worker list: minWorkers counts them)
SUMMARY_KEYS = ("status", "ready", "devices", "threads_per_worker",
                "max_batch_size", "worker_max_batch_size", "max_batch_delay_ms", "queue",
                "restarts", "batches", "mean_batch_size", "error")


def add_management_routes(app: Flask, config: Config, client: BrokerClient,
                          catalog: Catalog) -> None:
    token = token_of(config) if config.management_auth else ""
    hosts = allowed_host_names(config.management_host, config.management_allowed_hosts)
    allowlist = parse_allowlist(config.model_url_allowlist)

    @app.before_request
    def management_paths_answer_only_here() -> None:
        """Any method on a management path, an unknown one included, is checked before
        routing: 404 on other listeners, then the Host, Origin and token checks."""
        path = request.path
        if not (path in MANAGEMENT_PATHS or path.startswith("/models/")):
            return
        address = listener()
        if not (config.management_port and isinstance(address, tuple)
                and address[1] == config.management_port):
            raise NotFound("no such route on this listener (see /api-description)")
        check_host_and_origin(request.environ, hosts)
        if config.management_auth:
            check_token(request.headers.get("Authorization", ""), token)
        if request.method == "OPTIONS":  # no CORS preflight: browsers are refused anyway
            raise MethodNotAllowed("OPTIONS is not answered on the management API")

    def model_api(view: Callable[..., Any]) -> Callable[..., Any]:
        """Registering and removing models run an archive's code: only when enabled."""
        def check(**kwargs: Any) -> Any:
            if not config.enable_model_api:
                raise Forbidden("registering and removing models is off on this server "
                                "(start it with --enable-model-api)")
            return view(**kwargs)

        check.__name__ = view.__name__
        return check

    def models() -> dict[str, Any]:
        return catalog.fetch().raw["models"]

    def key_of(name: str, version: str | None = None) -> str:
        """The broker's key of a model's version (its default version when None)."""
        snapshot = catalog.fetch()
        key = snapshot.key_of(name, version)
        if key is None:
            versions = snapshot.versions(name)
            raise ModelNotFound(f"model {name!r} has no version {version!r}; its versions: "
                                f"{', '.join(versions)}" if versions and version else
                                f"model {name!r} is not registered")
        return key

    def known(key: str) -> dict[str, Any]:
        model = models().get(key)
        if model is None:
            raise ModelNotFound(f"model {key_parts(key)[0]!r} is not registered")
        return model

    def label(key: str) -> str:
        """How a status names a model: a later version with its version."""
        name, version = key_parts(key)
        return f'"{name}" version {version}' if version else f'"{name}"'

    @app.get("/metrics")
    def prometheus_metrics() -> Any:
        return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE)

    @app.get("/models")
    def list_models() -> Any:
        """MMS 1.x's listing: names and archive names, a page at a time."""
        limit = int_parameter("limit", 100, 1, MAX_PAGE)
        start = int_parameter("next_page_token", 0, 0, 1 << 31)
        snapshot = catalog.fetch()
        listed, defaults = snapshot.raw["models"], snapshot.raw["defaults"]
        names = sorted(defaults)  # each model once, as its default version
        page = [{"modelName": n, "modelUrl": model_url(n, listed[defaults[n]],
                                                       config.model_store)}
                for n in names[start:start + limit]]
        listing: dict[str, Any] = {"models": page}
        if start + limit < len(names):
            listing["nextPageToken"] = str(start + limit)
        return jsonify(listing)

    @app.get("/models/<name>")
    def describe_model(name: str, version: str | None = None) -> Any:
        """The default version, one version, or (`all`) every version."""
        if version == "all":
            key_of(name)
            versions = sorted((m for m in models().values() if m["model_name"] == name),
                              key=lambda m: m["version"])
            return jsonify([description(name, model, config.model_store)
                            for model in versions])
        # MMS 1.1 describes one model as one object (TorchServe: a list of one)
        return jsonify(description(name, known(key_of(name, version)), config.model_store))

    app.add_url_rule("/models/<name>/<version>", "describe_version", describe_model,
                     methods=["GET"])

    @app.put("/models/<name>/<version>/set-default")
    def set_default(name: str, version: str) -> Any:
        client.manage("set_default", {"name": key_of(name, version)}, MANAGE_TIMEOUT_S)
        catalog.fetch()
        return jsonify(status=f'Default version of model "{name}" set to {version}')

    def register_model() -> Any:
        asked = registration()
        with _archive_source(asked, config, allowlist) as source:
            extract_root = Path(config.run_dir or tempfile.gettempdir()) / "models"
            archive = load_archive(source, extract_root, name=asked.get("name"),
                                   limits=ExtractionLimits(max_total_bytes=config.max_archive_bytes))
        result = client.manage("register", {
            "name": archive.name, "folder": str(archive.root),
            "source": asked.get("path") or asked.get("url") or "", **settings_of(asked)},
            MANAGE_TIMEOUT_S)
        key = result["key"]
        catalog.fetch()  # this process routes the new model at once; others within 2 s
        if not asked.get("synchronous"):
            return jsonify(status=f"Model {label(key)} registered; its workers are "
                           "starting"), 202
        model = settled(key, asked.get("timeout_s"))
        if model.get("status") == "failed":
            client.manage("unregister", {"name": key}, MANAGE_TIMEOUT_S)
            raise ArchiveError(f"model {archive.name!r} failed to load: {model.get('error')}")
        return jsonify(status="Workers scaled")  # MMS 1.1's words once the workers are up

    app.add_url_rule("/models", "register_model", model_api(register_model),
                     methods=["POST"])

    @app.put("/models/<name>")
    def scale_model(name: str, version: str | None = None) -> Any:
        asked = scaling()
        settings = settings_of(asked)
        if not settings:
            raise InvalidInput("send min_worker (or workers), max_batch_size and/or "
                               "max_batch_delay_ms")
        key = key_of(name, version)
        client.manage("scale", {"name": key, **settings}, MANAGE_TIMEOUT_S)
        if not asked.get("synchronous"):
            return jsonify(status="Processing worker updates..."), 202
        settled(key, asked.get("timeout_s"))
        return jsonify(status="Workers scaled")

    app.add_url_rule("/models/<name>/<version>", "scale_version", scale_model,
                     methods=["PUT"])

    def settled(name: str, timeout_s: Any) -> dict[str, Any]:
        """The model once every planned worker is ready or it failed (synchronous calls),
        or as it is when the timeout runs out."""
        deadline = time.monotonic() + (timeout_s or config.model_load_timeout_s)
        while True:
            model = known(name)
            if model["status"] == "failed" or (model["ready"] >= model["workers"] > 0) \
                    or time.monotonic() > deadline:
                catalog.fetch()
                return model
            time.sleep(0.1)

    def delete_model(name: str, version: str | None = None) -> Any:
        key = key_of(name, version)
        client.manage("unregister", {"name": key}, MANAGE_TIMEOUT_S)
        deadline = time.monotonic() + config.drain_timeout_s
        while time.monotonic() < deadline:
            if key not in models():
                catalog.fetch()
                return jsonify(status=f"Model {label(key)} unregistered")
            time.sleep(0.1)
        return jsonify(status=f"Model {label(key)} is unregistering: its queued requests "
                       "are finishing"), 202

    app.add_url_rule("/models/<name>", "delete_model", model_api(delete_model),
                     methods=["DELETE"])
    app.add_url_rule("/models/<name>/<version>", "delete_version",
                     model_api(delete_model), methods=["DELETE"])


def model_url(name: str, model: dict[str, Any], store: str) -> str:
    """Where the model came from as MMS 1.x shows it: an archive in the model store by its
    name there, a URL as given, any other file by its own name (never a host's path)."""
    source = model.get("source") or ""
    if "://" in source:
        return source
    if store and source:
        root = os.path.realpath(store)
        resolved = os.path.realpath(os.path.join(root, source))
        if os.path.commonpath([root, resolved]) == root and resolved != root:
            return os.path.relpath(resolved, root)
    return os.path.basename(source.rstrip("/")) or name


def description(name: str, model: dict[str, Any], store: str = "") -> dict[str, Any]:
    """One model as MMS 1.x / TorchServe describe it, with mxserve's own figures after."""
    return {
        "modelName": name,
        "modelVersion": model.get("version") or "1.0",
        "isDefault": model["default"],
        "modelUrl": model_url(name, model, store),
        "runtime": "python",
        "minWorkers": model.get("workers"),
        "maxWorkers": model.get("workers"),
        "batchSize": model.get("max_batch_size"),
        "maxBatchDelay": model.get("max_batch_delay_ms"),
        "loadedAtStartup": model.get("loaded_at_startup", False),
        "workers": [{"id": w["id"], "pid": w["pid"],
                     "startTime": datetime.fromtimestamp(w["started"], UTC)
                     .isoformat(timespec="seconds"),
                     "status": "BUSY" if w["busy"] else "READY",
                     "gpu": w["device"].startswith("gpu"),
                     "memoryUsage": resident_bytes(w["pid"])}
                    for w in model.get("worker_list", [])],
        "name": name,
        **{key: model.get(key) for key in SUMMARY_KEYS},
    }


def resident_bytes(pid: int) -> int:
    """A worker's resident memory (it runs on this host); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


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
    if not os.path.exists(resolved):  # MMS 1.1's status and words
        raise ModelNotFound("Model not found in model store: "
                            f"{os.path.relpath(resolved, root)}")
    return resolved
