"""Lets a custom service written for MMS 0.4 or 1.x import what it imported there, unchanged.

`from mms.model_service.mxnet_vision_service import MXNetVisionService`,
`from mms.utils.mxnet import image, ndarray` and (MMS 1.x handlers) `from mms.context
import Context`, `from mms.service import PredictionException` or `from
mms.metrics.dimension import Dimension` resolve to mxserve's
equivalents. Installed
only when no real `mms` package is importable, and only in worker processes.
"""
from __future__ import annotations

import importlib.util
import sys
import types

_ALIASES = {
    "mms.model_service.model_service": "mxserve.worker.services.base",
    "mms.model_service.mxnet_model_service": "mxserve.worker.services.base",
    "mms.model_service.mxnet_vision_service": "mxserve.worker.services.vision",
    "mms.utils.mxnet.image": "mxserve.worker.services.utils.image",
    "mms.utils.mxnet.ndarray": "mxserve.worker.services.utils.ndarray",
    "mms.context": "mxserve.worker.services.handler_context",
    "mms.service": "mxserve.worker.services.handler_context",
    "mms.metrics.metrics_store": "mxserve.worker.services.handler_metrics",
    "mms.metrics.dimension": "mxserve.worker.services.handler_metrics",
}


def install() -> None:
    if "mms" in sys.modules or importlib.util.find_spec("mms") is not None:
        return
    for alias, target in _ALIASES.items():
        module = importlib.import_module(target)
        parts = alias.split(".")
        for depth in range(1, len(parts)):
            package = ".".join(parts[:depth])
            if package not in sys.modules:
                pkg = types.ModuleType(package)
                pkg.__path__ = []  # a namespace-like package: only our aliases live in it
                sys.modules[package] = pkg
            parent = ".".join(parts[:depth - 1])
            if parent:
                setattr(sys.modules[parent], parts[depth - 1], sys.modules[package])
        sys.modules[alias] = module
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
