"""The Swagger 2.0 description of the inference API, built from the models' signatures.

Paths and operationIds are MMS 0.4's (`/`, `/ping`, `/api-description` and
`/<model>/predict` with operationId `<model>_predict`), but the document is valid: real
booleans, legal formData parameters, response schemas that describe what is really sent
(0.4 declared the prediction and the description as strings). It passes
openapi-spec-validator (a unit test checks).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from mxserve.common.signature import Signature

HEALTH = {"type": "object", "properties": {"health": {"type": "string"}}}
ERROR = {"type": "object", "required": ["code", "type", "message"],
         "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                        "message": {"type": "string"}, "request_id": {"type": "string"}}}
TOP_K = {"type": "array", "items": {"type": "object", "properties": {
    "class": {"type": "string"}, "probability": {"type": "number"}}}}
PREDICT_ERRORS = {400: "Invalid input", 404: "Unknown model", 413: "Input too large",
                  415: "Not a JPEG or PNG image", 500: "The model raised",
                  503: "Overloaded or no ready worker; retry after Retry-After seconds",
                  504: "The deadline passed"}


def build_spec(signatures: Mapping[str, Signature], host: str,
               extra_paths: Mapping[str, Mapping[str, Any]] | None = None,
               handlers: Iterable[str] = ()) -> dict[str, Any]:
    """The whole document; `extra_paths` are custom endpoints (ServingFrontend.add_endpoint);
    `handlers`: MMS 1.x models, whose routes take any body."""
    paths: dict[str, Any] = {
        "/": {"get": _get("root", HEALTH, "Health, as /ping")},
        "/ping": {"get": _get("ping", HEALTH, "Health: 200 when every model has a ready "
                              "worker, 503 otherwise")},
        "/api-description": {"get": _get("api-description", {
            "type": "object", "properties": {"description": {"type": "object"}}},
            "This document")},
    }
    for name in sorted(signatures):
        paths[f"/{name}/predict"] = {"post": _predict(name, signatures[name])}
    for name in sorted(handlers):
        paths[f"/predictions/{name}"] = {"post": _handle(name, "predictions")}
        paths[f"/{name}/predict"] = {"post": _handle(name, "predict")}
    for path, operations in (extra_paths or {}).items():
        paths.setdefault(path, {}).update(operations)
    spec: dict[str, Any] = {
        "swagger": "2.0",
        "info": {"title": "Model Serving Apis", "version": "1.0.0"},
        "schemes": ["http"],
        "paths": paths,
        "definitions": {"Error": ERROR},
    }
    if host:
        spec["host"] = host
    return spec


def _get(operation_id: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"operationId": operation_id, "produces": ["application/json"],
            "description": description,
            "responses": {"200": {"description": "OK", "schema": schema}}}


def _handle(name: str, route: str) -> dict[str, Any]:
    """An MMS 1.x handler's route: any body (a form's fields by name, else "body"); its
    answer's media type and status are the handler's."""
    responses: dict[str, Any] = {"200": {"description": "the handler's answer"}}
    for status, text in PREDICT_ERRORS.items():
        responses[str(status)] = {"description": text, "schema": {"$ref": "#/definitions/Error"}}
    return {"operationId": f"{name}_{route}",
            "consumes": ["multipart/form-data", "application/octet-stream"],
            "description": "An MMS 1.x handler: a raw body reaches it as \"body\", a form's "
            "fields by their names", "responses": responses}


def _predict(name: str, signature: Signature) -> dict[str, Any]:
    parameters = []
    for spec in signature.inputs:
        if signature.is_image:
            description = (f"{spec.name} should be image which will be resized to: "
                           f"{list(spec.shape[1:])}")
            kind = "file"
        else:
            description = (f"{spec.name} should be a JSON list of numbers of shape "
                           f"{list(spec.shape)} (0 = any size)")
            kind = "string"
        parameters.append({"in": "formData", "name": spec.name, "required": True,
                           "type": kind, "description": description})
    prediction = ({"type": "array", "items": TOP_K} if signature.is_image
                  else {"type": "array", "items": {}})
    responses: dict[str, Any] = {"200": {"description": "OK", "schema": {
        "type": "object", "properties": {"prediction": prediction}}}}
    for status, text in PREDICT_ERRORS.items():
        responses[str(status)] = {"description": text, "schema": {"$ref": "#/definitions/Error"}}
    return {"operationId": f"{name}_predict", "consumes": ["multipart/form-data"],
            "produces": ["application/json"], "parameters": parameters,
            "responses": responses}
