"""What one request/response exchange leaves behind: its access-log line, its metrics, and
the JSON bytes of its answer. Used by frontend/request_path.py, the path every request
takes, so every route logs, counts and encodes alike.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from mxserve.common import metrics
from mxserve.common.errors import MXServeError, ServiceUnavailable, Unauthorized

log = logging.getLogger("frontend")
access_log = logging.getLogger("access")


@dataclass
class Exchange:
    """One request as the frontend saw it."""

    request_id: str  # the client's X-Request-Id when printable, else wire_id
    wire_id: str  # ours, unique: the id the broker's and worker's log lines carry
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    waited_s: float = 0.0  # waiting for a frontend thread, before `started`
    model: str = "-"  # a served model's name only: safe as a log field and a metric label
    timing: Mapping[str, Any] | None = None  # the broker's reply fields
    protocol: str = "-"  # the inference protocol of a prediction: "predict", "v2-rest", ...
    status: int = 200  # a direct route's answer status: an MMS 1.x handler may set another


_ids = itertools.count()
_ids_pid = os.getpid()


def next_wire_id() -> str:
    """A process-unique id for the request this thread is starting (unique across a fork:
    the pid is part of it, and a forked child starts its own count)."""
    global _ids, _ids_pid
    if _ids_pid != os.getpid():
        _ids, _ids_pid = itertools.count(), os.getpid()
    return f"{_ids_pid:x}-{next(_ids):x}"  # next() on a count is atomic under the GIL


def request_id_for(client_id: str, wire_id: str) -> str:
    """The id a response is tagged with: the client's own when it is a sane one."""
    return client_id[:64] if client_id and client_id.isprintable() else wire_id


def json_bytes(value: Any) -> bytes:
    """JSON as Flask's jsonify writes it (compact, ASCII, a final newline), so answers are
    byte-identical whichever route wrote them."""
    return (json.dumps(value, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


def error_answer(error: MXServeError, request_id: str | None
                 ) -> tuple[int, bytes, list[tuple[str, str]]]:
    """(status, body, extra headers) of an error, counted and, for our own faults, logged."""
    metrics.ERRORS.labels(error.type).inc()
    headers = []
    if isinstance(error, ServiceUnavailable):
        headers.append(("Retry-After", str(error.retry_after_s)))
    elif isinstance(error, Unauthorized):
        headers.append(("WWW-Authenticate", 'Bearer realm="mxserve management"'))
    if error.status >= 500:
        log.warning("request %s: %s %s", request_id, error.type, error.message)
    return error.status, json_bytes(error.to_dict(request_id)), headers


def log_access(exchange: Exchange, status: int, body_bytes: int, enabled: bool) -> None:
    """The access-log line of any request (the line is built only when it will be written)."""
    if enabled and access_log.isEnabledFor(logging.INFO):
        access_log.info(access_line(exchange, status, body_bytes))


def record_prediction(exchange: Exchange, status: int) -> None:
    """The metrics of one predict request, whatever its outcome."""
    predictions, request_seconds, queue_seconds, inference_seconds = _series(
        exchange.model, metrics.status_class(status), exchange.protocol)
    predictions.inc()
    request_seconds.observe(time.monotonic() - exchange.started)
    timing = exchange.timing
    if timing:
        queue_seconds.observe(timing.get("queue_ms", 0.0) / 1000.0)
        inference_seconds.observe(timing.get("inference_ms", 0.0) / 1000.0)


@functools.lru_cache(maxsize=4096)  # models x status classes x protocols; "-" unknown ones
def _series(model: str, status_class: str, protocol: str) -> tuple[Any, Any, Any, Any]:
    """One request's metric children, cached: `labels()` is a locked dict lookup, and a
    request needs four."""
    return (metrics.PREDICTIONS.labels(model, status_class, protocol),
            metrics.REQUEST_SECONDS.labels(model, protocol), metrics.QUEUE_SECONDS.labels(model),
            metrics.INFERENCE_SECONDS.labels(model))


def access_line(exchange: Exchange, status: int, body_bytes: int) -> str:
    """One logfmt line per request: who, what, outcome and where the time went; never the
    payload. Values that could break the format (client ids, odd paths) are quoted."""
    timing = exchange.timing or {}
    fields = {
        "request_id": exchange.request_id, "method": exchange.method, "path": exchange.path,
        "protocol": exchange.protocol, "model": exchange.model, "status": status,
        "bytes": body_bytes,
        "batch": timing.get("batch_size", "-"), "queue_ms": timing.get("queue_ms", "-"),
        "inference_ms": timing.get("inference_ms", "-"),
        "total_ms": f"{(time.monotonic() - exchange.started) * 1000:.2f}"}
    if exchange.wire_id != exchange.request_id:
        fields["wire_id"] = exchange.wire_id
    return " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items())


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:%" for c in text):
        return text
    return json.dumps(text)


def server_timing(exchange: Exchange, parsed: float, decoded: float,
                  timing: Mapping[str, Any]) -> str:
    """Where a prediction's time went, as the standard Server-Timing header (milliseconds):
    reading the request, decoding its inputs, and the broker's and worker's shares."""
    return (f"parse;dur={(parsed - exchange.started) * 1000:.2f}, "
            f"decode;dur={(decoded - parsed) * 1000 + timing.get('decode_ms', 0):.2f}, "
            f"queue;dur={timing.get('queue_ms', 0):.2f}, "
            f"inference;dur={timing.get('inference_ms', 0):.2f}, "
            f"worker;dur={timing.get('worker_ms', 0):.2f}, "
            f"broker;dur={(time.monotonic() - decoded) * 1000:.2f}, "
            f"batch;desc={timing.get('batch_size', 0)}")
