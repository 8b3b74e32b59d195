"""MAR-INF/MANIFEST.json of an MMS 1.x model archive (`.mar`): schema and a frozen record.

`model-archiver` 1.0 writes:

    {"runtime": "python",
     "model": {"modelName": "digits", "handler": "vision_service:handle"},
     "modelServerVersion": "1.0", "implementationVersion": "1.0",
     "specificationVersion": "1.0"}

The handler is `module` or `module:function`, the module a Python file at the top of the
archive: with a function, that function is `handle(data, context)`; without one, the
module's one class has `initialize(context)` and `handle(data, context)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from mxserve.common.errors import ArchiveError
from mxserve.common.manifest import validate_model_name

MAR_MANIFEST = "MAR-INF/MANIFEST.json"
RUNTIMES = ("python", "python3")  # python2 services cannot run on this server's Python

_TEXT = {"type": "string", "minLength": 1}
MAR_MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["runtime", "model"],
    "properties": {
        "runtime": {"type": "string"},
        "model": {
            "type": "object",
            "required": ["modelName", "handler"],
            "properties": {"modelName": _TEXT, "handler": _TEXT,
                           "modelVersion": {"type": ["string", "number"]},
                           "description": {"type": "string"}},
        },
    },
}

# A dotted module path with an optional function: no paths, so an import stays in the archive.
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_HANDLER = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*(:{_IDENTIFIER})?")
# A version is a path segment of /predictions/<model>/<version> and part of a model's key.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class MarManifest:
    model_name: str  # the name the archive was made with; its service may build file names from it
    module: str  # the handler's module, e.g. "vision_service"
    function: str  # "" for a class-style handler
    version: str  # model.modelVersion, "1.0" where model-archiver wrote none
    raw: dict[str, Any]

    @property
    def handler(self) -> str:
        return f"{self.module}:{self.function}" if self.function else self.module


def parse_mar_manifest(raw: Any) -> MarManifest:
    errors = sorted(jsonschema.Draft7Validator(MAR_MANIFEST_SCHEMA).iter_errors(raw),
                    key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "top level"
        raise ArchiveError(f"{MAR_MANIFEST} is invalid: {where}: {first.message}")
    if raw["runtime"] not in RUNTIMES:
        raise ArchiveError(f"{MAR_MANIFEST}: runtime {raw['runtime']!r} cannot be served here "
                           f"(supported: {', '.join(RUNTIMES)})")
    model = raw["model"]
    handler = model["handler"]
    if handler.endswith(".py") and ":" not in handler:
        handler = handler[:-3]  # model-archiver accepts a file name as the module
    if not _HANDLER.fullmatch(handler):
        raise ArchiveError(f"{MAR_MANIFEST}: model.handler {model['handler']!r} must be a "
                           "module name, optionally with ':function'")
    module, _, function = handler.partition(":")
    version = str(model.get("modelVersion", "1.0"))
    if not _VERSION.fullmatch(version) or ".." in version:
        raise ArchiveError(f"{MAR_MANIFEST}: model.modelVersion {version[:70]!r} must be "
                           "letters, digits, '_', '-' and '.' (at most 64 characters)")
    return MarManifest(model_name=validate_model_name(model["modelName"]), module=module,
                       function=function, version=version, raw=raw)
