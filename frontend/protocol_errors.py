"""How each protocol says what went wrong: one table per protocol, from mxserve's error
types (common/errors.py, whose HTTP_STATUS gives the status) to the protocol's own words.

- mxserve and MMS 0.4 routes: {"code", "type", "message", "request_id"}, our type names.
- MMS 1.x routes (/predictions/..., the management API): the same body with MMS 1.1's
  exception names as `type` (ModelNotFoundException, BadRequestException, ...), which
  MMS 1.x clients match on.
- KServe v2 REST: {"error": message}, with our status.
- KServe v2 gRPC: a status code per HTTP status, with our message as the details.

tests/integration/test_protocol_errors.py walks the cases (unknown model, unknown version,
wrong input, model failed, model loading) over every protocol from these tables.
"""
from __future__ import annotations

from mxserve.common.errors import (
    ArchiveError,
    Conflict,
    DeadlineExceeded,
    InternalServerError,
    InvalidInput,
    MethodNotAllowed,
    ModelError,
    ModelNotFound,
    MXServeError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
)
from mxserve.frontend.exchange import error_answer, json_bytes

Answer = tuple[int, bytes, list[tuple[str, str]]]

# The names MMS 1.1's frontend gives the same failures; others keep ours (ModelFailed, a
# model that will not load, has no MMS 1.1 name: its own says not to retry).
MMS1_TYPES: dict[str, str] = {
    ModelNotFound.type: "ModelNotFoundException",
    NotFound.type: "ResourceNotFoundException",
    InvalidInput.type: "BadRequestException",
    ArchiveError.type: "BadRequestException",
    MethodNotAllowed.type: "MethodNotAllowedException",
    Conflict.type: "ConflictStatusException",
    RequestTimeout.type: "RequestTimeoutException",
    DeadlineExceeded.type: "RequestTimeoutException",
    ServiceUnavailable.type: "ServiceUnavailableException",
    ModelError.type: "InternalServerException",
    InternalServerError.type: "InternalServerException",
}

# KServe v2 gRPC: grpc.StatusCode names by HTTP status (INTERNAL for the rest).
GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def mms1_error_answer(error: MXServeError, request_id: str | None) -> Answer:
    status, _, headers = error_answer(error, request_id)
    body = {"code": status, "type": MMS1_TYPES.get(error.type, error.type),
            "message": error.message}
    if request_id is not None:
        body["request_id"] = request_id
    return status, json_bytes(body), headers


def v2_error_answer(error: MXServeError, request_id: str | None) -> Answer:
    """The protocol's error body, {"error": message}, with our status and headers."""
    status, _, headers = error_answer(error, request_id)
    return status, json_bytes({"error": error.message}), headers


def grpc_code_name(status: int) -> str:
    return GRPC_CODES.get(status, "INTERNAL")


# Paths whose errors a protocol other than mxserve's own answers, by prefix.
ERROR_ANSWERS = {"/v2/": v2_error_answer, "/predictions/": mms1_error_answer,
                 "/models/": mms1_error_answer}
