"""`ServingFrontend`: the seed's public API for embedding and extending mxserve.

    from mxserve.instance import ServingFrontend

    serving = ServingFrontend("my_app")
    [DigitService] = serving.register_module("digit_service.py")
    serving.load_models({"digits": "digits.model"}, DigitService)
    serving.add_endpoint({"/digits/labels": {"get": {"operationId": "digits_labels", ...}}},
                         labels_callback)
    serving.start_model_serving("127.0.0.1", 8080)   # blocks; Ctrl-C/SIGTERM drains

Same methods and meaning as MMS 0.4's `ServingFrontend`, on the multi-process design: this
object does not run models. `load_models` records which archive is served under which name
with which service class; `start_model_serving` starts the broker (which starts one worker
per GPU, or CPU workers) and runs gunicorn in a forked child around a Flask app that carries
the custom endpoints, so every gunicorn process serves them. `register_module` imports the
service file to return its classes, as 0.4 did (this imports mxnet here; the forked
frontends never call it).
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mxserve.common.archive import ModelArchive, load_archive
from mxserve.common.config import Config, load_config
from mxserve.common.errors import ConfigError, MXServeError

log = logging.getLogger(__name__)

HTTP_METHODS = ("get", "post", "put", "delete", "patch")
RESERVED_PATHS = ("/", "/ping", "/api-description")


class ServingFrontendError(MXServeError):
    """A misuse of the ServingFrontend API, with what to do instead."""

    type = "InvalidInput"


@dataclass(frozen=True)
class LoadedModel:
    """What `get_loaded_modelservices` returns for a model: it runs in worker processes, so
    this is its description, not an instance."""

    name: str
    model_name: str
    archive: ModelArchive
    service_class: type
    gpu: int | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> dict[str, Any]:
        return self.archive.signature.to_dict()

    @property
    def labels(self) -> list[str] | None:
        return list(self.archive.synset) if self.archive.synset is not None else None


class ServingFrontend:
    def __init__(self, app_name: str, config: Config | None = None) -> None:
        if not isinstance(app_name, str) or not app_name.strip():
            raise ServingFrontendError("Failed to initialise serving frontend: app_name must "
                                       f"be a non-empty string, got {app_name!r}")
        try:
            self.config = config or load_config()
        except ConfigError as exc:
            raise ServingFrontendError("Failed to initialise serving frontend: "
                                       f"{exc.message}") from exc
        self.app_name = app_name
        self._registry: dict[str, type] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._endpoints: list[Any] = []
        self._extract_dir: str | None = None
        self.openapi_endpoints: dict[str, Any] | None = None

    # -- model services ---------------------------------------------------------------

    def register_module(self, user_defined_module_file_path: str | Path) -> list[type]:
        """Register the ModelService classes a Python file defines (leaves only, as 0.4:
        a class another class in the file derives from is a base, not a service)."""
        from mxserve.worker.services.loader import service_classes_in

        path = Path(user_defined_module_file_path)
        if not path.is_file() or path.suffix != ".py":
            raise ServingFrontendError(f"module file {str(path)!r} is not a Python file")
        try:
            classes = service_classes_in(path.resolve())
        except MXServeError as exc:
            raise ServingFrontendError(exc.message) from exc
        if not classes:
            raise ServingFrontendError(
                f"No valid python class derived from a ModelService is in module file {path}: "
                "define a subclass of MXNetBaseService or MXNetVisionService")
        for cls in classes:
            self._registry[cls.__name__] = cls
        return classes

    def get_registered_modelservices(self, modelservice_names: str | list[str] | None = None
                                     ) -> dict[str, type]:
        return _select(self._registry, modelservice_names, "registered model service")

    def get_loaded_modelservices(self, modelservice_names: str | list[str] | None = None
                                 ) -> dict[str, LoadedModel]:
        return _select(self._loaded, modelservice_names, "loaded model")

    # The seed's spelling.
    get_registered_model_services = get_registered_modelservices
    get_loaded_model_services = get_loaded_modelservices

    def load_models(self, models: Mapping[str, str] | list[tuple], ModelServiceClassDef: type,
                    gpu: int | None = None) -> None:
        """Serve models with a service class: `{model_name: model_path}`, or the seed's
        `[(service_name, model_name, model_path, manifest), ...]` (served as service_name)."""
        from mxserve.worker.services.base import ModelService

        if not (isinstance(ModelServiceClassDef, type)
                and issubclass(ModelServiceClassDef, ModelService)):
            raise ServingFrontendError(f"{ModelServiceClassDef!r} is not a ModelService class; "
                                       "pass one returned by register_module")
        if isinstance(models, Mapping):
            entries = [(name, name, path, None) for name, path in models.items()]
        elif isinstance(models, (list, tuple)):
            entries = []
            for entry in models:
                if not (isinstance(entry, (list, tuple)) and len(entry) == 4):
                    raise ServingFrontendError(
                        "each model must be (service_name, model_name, model_path, manifest), "
                        f"got {entry!r}")
                entries.append(tuple(entry))
        else:
            raise ServingFrontendError("models must be a dict {model_name: model_path} or a "
                                       "list of (service_name, model_name, model_path, "
                                       "manifest)")
        if gpu is not None and (not isinstance(gpu, int) or gpu < 0):
            raise ServingFrontendError(f"gpu must be a GPU index (0, 1, ...) or None, got {gpu!r}")
        for service_name, model_name, model_path, manifest in entries:
            if service_name in self._loaded:
                raise ServingFrontendError(f"a model is already served as {service_name!r}")
            try:
                archive = load_archive(model_path, self._extract_root(), name=service_name)
            except MXServeError as exc:
                raise ServingFrontendError(f"model {service_name!r}: {exc.message}") from exc
            self._loaded[service_name] = LoadedModel(
                name=service_name, model_name=model_name, archive=archive,
                service_class=ModelServiceClassDef, gpu=gpu,
                manifest=manifest or archive.manifest.raw)
            log.info("model %s (%s) will be served by %s", service_name, model_path,
                     ModelServiceClassDef.__name__)

    def _extract_root(self) -> str:
        if self._extract_dir is None:
            import tempfile

            self._extract_dir = tempfile.mkdtemp(prefix=f"mxserve-{self.app_name}-models-")
        return self._extract_dir

    # -- endpoints --------------------------------------------------------------------

    def add_endpoint(self, api_definition: Mapping[str, Any], callback: Callable[..., Any],
                     **kwargs: Any) -> None:
        """Add a route from a one-path OpenAPI definition, e.g.
        `{"/digits/labels": {"get": {"operationId": "digits_labels", "responses": {...}}}}`;
        `callback(**kwargs, **path_parameters)` answers it (a dict or list becomes JSON)."""
        from mxserve.frontend.app import CustomEndpoint

        if not isinstance(api_definition, Mapping) or len(api_definition) != 1:
            raise ServingFrontendError("api_definition must hold exactly one path")
        [(path, operations)] = api_definition.items()
        if not isinstance(path, str) or not path.startswith("/"):
            raise ServingFrontendError(f"endpoint path must start with '/', got {path!r}")
        if path in RESERVED_PATHS or (path.count("/") == 2 and path.endswith("/predict")):
            raise ServingFrontendError(f"{path} is one of mxserve's own routes")
        if not isinstance(operations, Mapping) or len(operations) != 1:
            raise ServingFrontendError(f"{path}: define exactly one method")
        [(method, operation)] = operations.items()
        if method.lower() not in HTTP_METHODS:
            raise ServingFrontendError(f"{path}: method {method!r} is not one of {HTTP_METHODS}")
        if not isinstance(operation, Mapping) or not operation.get("operationId"):
            raise ServingFrontendError(f"{path}: the operation needs an operationId")
        operation = {"responses": {"200": {"description": "OK"}}, **operation}
        if any(e.operation["operationId"] == operation["operationId"] for e in self._endpoints):
            raise ServingFrontendError(f"operationId {operation['operationId']!r} is taken")
        view = functools.partial(callback, **kwargs) if kwargs else callback
        self._endpoints.append(CustomEndpoint(path, method.lower(), dict(operation), view))

    @staticmethod
    def get_query_string(field: str) -> str | None:
        """A query-string field of the request being handled (inside an endpoint callback)."""
        from flask import request

        return request.args.get(field)

    def setup_openapi_endpoints(self, host: str, port: int) -> dict[str, Any]:
        """The Swagger 2.0 document the server will serve at /api-description."""
        from mxserve.frontend.openapi import build_spec

        self.config = self.config.replace(host=host, port=int(port))
        extra: dict[str, dict[str, Any]] = {}
        for endpoint in self._endpoints:
            extra.setdefault(endpoint.path, {})[endpoint.method] = endpoint.operation
        signatures = {name: model.archive.signature for name, model in self._loaded.items()}
        self.openapi_endpoints = build_spec(signatures, f"{host}:{port}", extra)
        return self.openapi_endpoints

    # -- serving ----------------------------------------------------------------------

    def start_model_serving(self, host: str = "127.0.0.1", port: int = 8080) -> int:
        """Serve until SIGINT/SIGTERM: broker + workers, gunicorn frontends with the custom
        endpoints. Returns the exit code (0 after a clean stop)."""
        from mxserve.frontend.app import create_app
        from mxserve.instance.launcher import Launcher

        if not self._loaded:
            raise ServingFrontendError("no models loaded: call load_models first")
        self.setup_openapi_endpoints(host, port)
        gpus = {model.gpu for model in self._loaded.values()}
        models = [f"{name}={model.archive.root}" for name, model in self._loaded.items()]
        services = [f"{name}={_service_file(model.service_class)}:"
                    f"{model.service_class.__name__}"
                    for name, model in self._loaded.items() if _is_custom(model.service_class)]
        config = self.config.replace(models=models, services=services)
        if gpus - {None}:
            if len(gpus) != 1:
                raise ServingFrontendError("all models of one ServingFrontend share its GPU "
                                           "setting")
            config = config.replace(gpu=gpus.pop())
        launcher = Launcher(config, app=None)
        launcher.app = create_app(launcher.config, self._endpoints, process_name=self.app_name)
        return launcher.run()

    start_handler = start_model_serving  # the seed's older name


def _select(registry: Mapping[str, Any], names: str | list[str] | None, what: str
            ) -> dict[str, Any]:
    if names is None:
        return dict(registry)
    wanted = [names] if isinstance(names, str) else list(names)
    missing = [n for n in wanted if n not in registry]
    if missing:
        raise ServingFrontendError(f"no {what} named {missing}; known: {sorted(registry)}")
    return {n: registry[n] for n in wanted}


def _is_custom(cls: type) -> bool:
    return not cls.__module__.startswith("mxserve.worker.services")


def _service_file(cls: type) -> str:
    source = inspect.getsourcefile(cls)
    if source is None:
        raise ServingFrontendError(f"cannot find the source file of {cls.__name__}")
    return str(Path(source).resolve())
