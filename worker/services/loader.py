"""Finding the ModelService class for an archive, and constructing it.

MMS 0.4's exporter copies its stock `mxnet_vision_service.py` / `mxnet_model_service.py`
into every archive; those (which import `mms.*`) are recognised by file name and replaced
by the built-in equivalents. Any other service file is imported as a custom service: it
must define ModelService subclasses, and the leaf among them (the class nothing else in
the file derives from) is the service, as in 0.4. Imports of `mms.model_service.*` and
`mms.utils.mxnet.*` in such a file resolve to mxserve's classes (see `mms_alias`).
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from mxserve.common.archive import ModelArchive
from mxserve.common.errors import ArchiveError, exception_text
from mxserve.worker.services import mms_alias
from mxserve.worker.services.base import ModelService, MXNetBaseService
from mxserve.worker.services.vision import MXNetVisionService

log = logging.getLogger(__name__)

STOCK_SERVICES: dict[str, type[ModelService]] = {
    "mxnet_vision_service.py": MXNetVisionService,
    "mxnet_model_service.py": MXNetBaseService,
}


def service_class_for(archive: ModelArchive, service_file: str | None = None,
                      class_name: str | None = None) -> type[ModelService]:
    """The archive's service class; `service_file` (0.4's --service) overrides the manifest,
    `class_name` picks one of the file's classes (else the file must have exactly one)."""
    path = Path(service_file) if service_file else archive.service_path
    file_name = path.name
    if not service_file and file_name in STOCK_SERVICES:
        return STOCK_SERVICES[file_name]
    if not path.is_file():
        raise ArchiveError(f"service file {file_name!r} not found")
    if path.suffix != ".py":
        raise ArchiveError(f"service file {file_name!r} must be a Python (.py) file")
    if class_name:
        module = import_file(path)
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, ModelService)):
            raise ArchiveError(f"{file_name} has no ModelService class named {class_name!r}")
        return cls
    classes = service_classes_in(path)
    if not classes:
        raise ArchiveError(f"{file_name} defines no ModelService subclass (a custom service "
                           "subclasses MXNetBaseService or MXNetVisionService)")
    if len(classes) > 1:
        raise ArchiveError(f"{file_name} defines several unrelated services "
                           f"{sorted(c.__name__ for c in classes)}; keep exactly one")
    return classes[0]


def service_classes_in(path: Path) -> list[type[ModelService]]:
    """The leaf ModelService subclasses defined in the Python file at `path`."""
    module = import_file(path)
    defined = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, ModelService) and cls.__module__ == module.__name__]
    return [cls for cls in defined
            if not any(other is not cls and issubclass(other, cls) for other in defined)]


def import_file(path: Path) -> ModuleType:
    mms_alias.install()
    module_name = "mxserve_service_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArchiveError(f"cannot import {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a custom file can raise anything at import
        sys.modules.pop(module_name, None)
        raise ArchiveError(f"importing {path.name} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_service(archive: ModelArchive, gpu: int | None = None, max_batch_size: int = 1,
                 service_file: str | None = None, service_class: str | None = None,
                 run_forward: Callable[[Callable[[], Any]], Any] | None = None
                 ) -> ModelService:
    """Construct the archive's service the 0.4 way and bind it for `max_batch_size`.
    `run_forward`: how its predictor runs each forward (the worker's lent cores), set
    before binding so the warm-up forwards are timed too."""
    cls = service_class_for(archive, service_file, service_class)
    log.info("model %s: service %s from %s", archive.name, cls.__name__,
             archive.manifest.service_file)
    try:
        service = cls(archive.name, str(archive.root), archive.manifest.raw, gpu)
        predictor = getattr(service, "predictor", None)
        if run_forward is not None and predictor is not None:
            predictor.run_forward = run_forward
        service.set_max_batch_size(max_batch_size)
    except ArchiveError:
        raise
    except Exception as exc:
        raise ArchiveError(f"{cls.__name__} failed to initialise: "
                           f"{exception_text(exc)}") from exc
    return service
