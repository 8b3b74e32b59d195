"""The one error hierarchy of mxserve.

Every error that can reach a client is an `MXServeError` subclass with a stable `type`
name (it crosses the wire between worker, broker and frontend) and an HTTP status from
one table, `HTTP_STATUS`. Nothing else maps errors to statuses.
"""
from __future__ import annotations

from typing import Any


class MXServeError(Exception):
    """Base of every error mxserve reports. `type` is the stable name sent on the wire."""

    type = "InternalServerError"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.type]

    def to_wire(self) -> dict[str, Any]:
        """The error as it crosses between processes (error_from_wire reads it back)."""
        return {"type": self.type, "message": self.message}

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON error body: code, type, message, request_id."""
        body: dict[str, Any] = {"code": self.status, "type": self.type, "message": self.message}
        if request_id is not None:
            body["request_id"] = request_id
        return body


class InvalidInput(MXServeError):
    type = "InvalidInput"


class Unauthorized(MXServeError):
    type = "Unauthorized"


class Forbidden(MXServeError):
    """Refused whoever asks: a management request from a foreign Host or Origin, or an
    operation this server was started without."""

    type = "Forbidden"


class NotFound(MXServeError):
    """No route at this URL (a route for a model that is not loaded is ModelNotFound)."""

    type = "NotFound"


class ModelNotFound(MXServeError):
    type = "ModelNotFound"


class Conflict(MXServeError):
    """The name is taken: registering a model under the name of one already served."""

    type = "Conflict"


class RequestTimeout(MXServeError):
    """The client did not send its whole request in time."""

    type = "RequestTimeout"


class MethodNotAllowed(MXServeError):
    type = "MethodNotAllowed"


class PayloadTooLarge(MXServeError):
    type = "PayloadTooLarge"


class UnsupportedMediaType(MXServeError):
    type = "UnsupportedMediaType"


class URITooLong(MXServeError):
    """The request line is over gunicorn's limit_request_line."""

    type = "URITooLong"


class HeaderFieldsTooLarge(MXServeError):
    """Too many headers, or one too long, for gunicorn's limits."""

    type = "HeaderFieldsTooLarge"


class NotImplementedByServer(MXServeError):
    """A transfer coding (or other HTTP feature) the server does not implement."""

    type = "NotImplemented"


class ModelError(MXServeError):
    """The model's own code (preprocess, inference, postprocess) raised."""

    type = "ModelError"


class ModelFailed(MXServeError):
    """A model that failed to load for good: retrying will not help (no Retry-After)."""

    type = "ModelFailed"


class InternalServerError(MXServeError):
    type = "InternalServerError"


class ServiceUnavailable(MXServeError):
    """Overload, no ready worker, or a request lost twice; the client should retry."""

    type = "ServiceUnavailable"

    def __init__(self, message: str, retry_after_s: int = 1, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.retry_after_s = retry_after_s

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "retry_after_s": self.retry_after_s}


class DeadlineExceeded(MXServeError):
    type = "DeadlineExceeded"


class ArchiveError(MXServeError):
    """A model archive is malformed or unsafe; raised at load or export time."""

    type = "ArchiveError"


class ConfigError(MXServeError):
    """A setting, flag or settings file is unusable; the process exits with EXIT_BAD_CONFIG."""

    type = "InvalidInput"


class ProtocolError(MXServeError):
    """A wire message could not be decoded; logged, counted and dropped, never sent to clients."""

    type = "ProtocolError"


HTTP_STATUS: dict[str, int] = {
    InvalidInput.type: 400,
    Unauthorized.type: 401,
    Forbidden.type: 403,
    NotFound.type: 404,
    ModelNotFound.type: 404,
    MethodNotAllowed.type: 405,
    Conflict.type: 409,
    RequestTimeout.type: 408,
    PayloadTooLarge.type: 413,
    UnsupportedMediaType.type: 415,
    URITooLong.type: 414,
    HeaderFieldsTooLarge.type: 431,
    NotImplementedByServer.type: 501,
    ArchiveError.type: 400,
    ModelError.type: 500,
    ModelFailed.type: 500,
    InternalServerError.type: 500,
    ProtocolError.type: 500,
    ServiceUnavailable.type: 503,
    DeadlineExceeded.type: 504,
}

_BY_TYPE: dict[str, type[MXServeError]] = {
    cls.type: cls
    for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, ModelNotFound, MethodNotAllowed,
                Conflict, RequestTimeout,
                PayloadTooLarge, UnsupportedMediaType, URITooLong, HeaderFieldsTooLarge,
                NotImplementedByServer, ModelError, ModelFailed, InternalServerError,
                ServiceUnavailable,
                DeadlineExceeded, ArchiveError, ProtocolError)
}


def error_from_wire(raw: Any) -> MXServeError:
    """Rebuild an error that `to_wire` wrote; an unknown type or a malformed error is our
    own fault (InternalServerError)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), str):
        return InternalServerError("malformed error from another mxserve process")
    cls = _BY_TYPE.get(raw.get("type"), InternalServerError)  # type: ignore[arg-type]
    if cls is ServiceUnavailable:
        retry = raw.get("retry_after_s")
        return ServiceUnavailable(raw["message"], retry_after_s=retry if type(retry) is int
                                  and 0 <= retry <= 3600 else 1)
    return cls(raw["message"])


def exception_text(exc: BaseException) -> str:
    """What an exception says, as one line: MXNet's errors start with a "Traceback" header
    and put their message last (`MXNetError: Check failed: ...`), so that line is kept."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Traceback"):
        last = lines[-1]
        name = type(exc).__name__
        return last if last.startswith(f"{name}: ") else f"{name}: {last}"
    return f"{type(exc).__name__}: {lines[0]}"


# Process exit codes: a contract with whoever supervises the process (docs/design.md).
# "Bad config" and "model cannot load" must not be restart-looped; a crash is restarted.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_CONFIG = 2  # also what argparse uses for a bad command line
EXIT_MODEL_LOAD = 3
