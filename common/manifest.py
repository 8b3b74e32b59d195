"""MANIFEST.json of an MMS 0.4 model archive: schema validation and a frozen Manifest.

MMS 0.4's `mxnet-model-export` writes (the reference archive in shared/reference has one):

    {"Model-Archive-Version": 0.2, "Model-Archive-Description": "digits", "Model-Server": 0.4,
     "Model": {"Symbol": "digits-symbol.json", "Parameters": "digits-0000.params",
               "Signature": "signature.json", "Service": "mxnet_vision_service.py",
               "Description": "digits", "Model-Name": "digits", "Model-Format": "MXNet-Symbolic"},
     "Engine": {"MXNet": "1.9.1"}}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from mxserve.common.errors import ArchiveError

_VERSION = {"type": ["number", "string"]}
_FILE_NAME = {"type": "string", "minLength": 1}

MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["Model-Archive-Version", "Model-Server", "Engine", "Model"],
    "properties": {
        "Model-Archive-Version": _VERSION,
        "Model-Archive-Description": {"type": "string"},
        "Model-Server": _VERSION,
        "License": {"type": "string"},
        "Created-By": {"type": "object"},
        "Engine": {"type": "object", "required": ["MXNet"], "properties": {"MXNet": _VERSION}},
        "Model": {
            "type": "object",
            "required": ["Model-Name", "Model-Format", "Signature", "Service", "Symbol",
                         "Parameters"],
            "properties": {
                "Model-Name": {"type": "string", "minLength": 1},
                "Model-Format": {"type": "string", "enum": ["MXNet-Symbolic"]},
                "Signature": _FILE_NAME,
                "Service": _FILE_NAME,
                "Symbol": _FILE_NAME,
                "Parameters": _FILE_NAME,
                "Description": {"type": "string"},
            },
        },
    },
}

# Model names appear in URL paths (/<name>/predict) and in file names: keep them plain.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ArchiveError(f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
                           "(starting with a letter or digit, at most 128 characters)")
    return name


@dataclass(frozen=True)
class Manifest:
    model_name: str
    model_format: str
    symbol_file: str
    params_file: str
    signature_file: str
    service_file: str
    archive_version: str
    server_version: str
    engine_version: str
    description: str
    raw: dict[str, Any]


def parse_manifest(raw: Any) -> Manifest:
    """Validate MANIFEST.json against the MMS 0.4 schema; errors name the missing/bad key."""
    errors = sorted(jsonschema.Draft7Validator(MANIFEST_SCHEMA).iter_errors(raw),
                    key=lambda e: list(e.absolute_path))
    if errors:
        raise ArchiveError("MANIFEST.json is invalid: " + "; ".join(_describe(e) for e in errors))
    model = raw["Model"]
    for key in ("Signature", "Service", "Symbol", "Parameters"):
        name = model[key]
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ArchiveError(f"MANIFEST.json: Model.{key} must be a plain file name in the "
                               f"archive, got {name!r}")
    return Manifest(
        model_name=validate_model_name(model["Model-Name"]),
        model_format=model["Model-Format"],
        symbol_file=model["Symbol"],
        params_file=model["Parameters"],
        signature_file=model["Signature"],
        service_file=model["Service"],
        archive_version=str(raw["Model-Archive-Version"]),
        server_version=str(raw["Model-Server"]),
        engine_version=str(raw["Engine"]["MXNet"]),
        description=str(model.get("Description", raw.get("Model-Archive-Description", ""))),
        raw=raw,
    )


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        key = f"{where}.{missing}" if where else missing
        return f"missing required key {key!r}"
    return f"{where or 'top level'}: {error.message}"
