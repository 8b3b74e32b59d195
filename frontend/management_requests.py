"""How a management call is read: MMS 1.x / TorchServe's query parameters or mxserve's JSON
body, checked against one schema per operation, so both forms are the same operation."""
from __future__ import annotations

import json
from typing import Any

import jsonschema
from flask import request

from mxserve.common.errors import InvalidInput
from mxserve.common.settings import MAX_BATCH_DELAY_MS, MAX_WORKERS_PER_MODEL

MAX_BATCH_SIZE = 1024


SETTINGS_PROPERTIES: dict[str, Any] = {
    "workers": {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS_PER_MODEL},
    "max_batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SIZE},
    "max_batch_delay_ms": {"type": "number", "minimum": 0, "maximum": MAX_BATCH_DELAY_MS},
}
CALL_PROPERTIES: dict[str, Any] = {
    "synchronous": {"type": "boolean"},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
}
REGISTER = jsonschema.Draft7Validator({
    "type": "object", "additionalProperties": False,
    "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 4096},
                   "url": {"type": "string", "minLength": 1, "maxLength": 4096},
                   "name": {"type": "string", "minLength": 1, "maxLength": 128},
                   **SETTINGS_PROPERTIES, **CALL_PROPERTIES},
})
SCALE = jsonschema.Draft7Validator({"type": "object", "additionalProperties": False,
                                    "properties": {**SETTINGS_PROPERTIES,
                                                   **CALL_PROPERTIES}})

# MMS 1.x's query parameters -> the same operation's JSON keys (and how to read them).
REGISTER_PARAMETERS = {"url": ("url", str), "model_name": ("name", str),
                       "initial_workers": ("workers", int), "batch_size": ("max_batch_size", int),
                       "max_batch_delay": ("max_batch_delay_ms", float),
                       "response_timeout": ("timeout_s", float),
                       "synchronous": ("synchronous", bool)}
SCALE_PARAMETERS = {"min_worker": ("workers", int), "max_worker": (None, int),
                    "number_gpu": (None, int), "synchronous": ("synchronous", bool),
                    "timeout": ("timeout_s", float)}
MAX_PAGE = 1000


def registration() -> dict[str, Any]:
    """POST /models: MMS 1.x's query parameters or mxserve's JSON body, one operation. An
    MMS 1.x `url` without a scheme is a file in the model store."""
    if not request.args:
        if not request.get_data():
            raise InvalidInput("Parameter url is required (or send mxserve's JSON body)")
        return _json_body(REGISTER)
    asked = _query(REGISTER_PARAMETERS, REGISTER)
    url = asked.pop("url", None)
    if url is None:
        raise InvalidInput("url: the archive's file name in the model store, or a URL")
    asked["url" if "://" in url else "path"] = url
    return asked


def scaling() -> dict[str, Any]:
    return _query(SCALE_PARAMETERS, SCALE) if request.args else _json_body(SCALE)


def _query(parameters: dict[str, tuple[str | None, type]],
           schema: jsonschema.Draft7Validator) -> dict[str, Any]:
    unknown = sorted(set(request.args) - set(parameters))
    if unknown:
        raise InvalidInput(f"unknown query parameter(s) {unknown}; known: {sorted(parameters)}")
    asked: dict[str, Any] = {}
    for name, value in request.args.items():
        key, kind = parameters[name]
        if key is None:
            continue  # accepted as MMS 1.x did, with nothing to do here
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                asked[key] = value.lower() == "true"
            else:
                asked[key] = kind(value)
        except ValueError as exc:
            raise InvalidInput(f"{name}: {value[:40]!r} is not a valid "
                               f"{'true/false' if kind is bool else kind.__name__}") from exc
    error = jsonschema.exceptions.best_match(schema.iter_errors(asked))
    if error is not None:
        reverse = {key: name for name, (key, _) in parameters.items() if key}
        where = "/".join(reverse.get(str(p), str(p)) for p in error.absolute_path)
        raise InvalidInput(f"{where + ': ' if where else ''}{error.message}")
    return asked


def int_parameter(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return number


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


def settings_of(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in SETTINGS_PROPERTIES if body.get(key) is not None}
