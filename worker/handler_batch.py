"""Running one batch of requests through an MMS 1.x handler, one answer or error per request.

As for tensor batches (worker/batch.py): a request past its deadline is not run (504); a
request whose values cannot be read is its own 400; the rest go to `handle` in one call,
and if that raises, one at a time, so a failing request fails alone. A handler's
`PredictionException(message, error_code)` answers that request with its status and our
JSON error body; anything else it raises is that request's 500.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np

from mxserve.common.errors import InvalidInput
from mxserve.common.protocol import Item, RequestItem, read_fields
from mxserve.worker.batch import MAX_MESSAGE_CHARS, Outcome, admit_items, model_error
from mxserve.worker.services.handler_service import JSON_TYPE, HandlerRequest, HandlerService

log = logging.getLogger(__name__)


def run_handler_batch(service: HandlerService, items: Sequence[Item],
                      deadlines: Sequence[float]) -> list[Outcome]:
    outcomes, runnable = admit_items(items, deadlines, handler_request)
    if runnable:
        for outcome in _run(service, [request for _, request in runnable]):
            outcomes[outcome.id] = outcome
    return [outcomes[item.id] for item in items]


def handler_request(item: Item) -> HandlerRequest:
    """The request dict a handler sees, from the item's byte arrays and their media types."""
    asked = read_fields(RequestItem, item.fields)
    parameters, headers = asked.parameters, asked.headers or {}
    if not (isinstance(parameters, dict) and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str)
                    for pairs in (parameters, headers) for k, v in pairs.items())):
        raise InvalidInput("malformed handler request")
    if set(parameters) != set(item.arrays):
        raise InvalidInput("the request's values do not match their names")
    data = {}
    for name, content_type in parameters.items():
        array = item.arrays[name]
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
            raise InvalidInput(f"value {name!r} must be bytes")
        data[name] = parsed_value(name, array.tobytes(), content_type)
    # As MMS 1.x: each value's media type under its name, then the request's own headers.
    properties: dict[str, Any] = {name: {"content-type": content_type}
                                  for name, content_type in parameters.items()}
    properties.update(headers)
    return HandlerRequest(item.id, data, properties)


def parsed_value(name: str, raw: bytes, content_type: str) -> Any:
    """As MMS 1.x hands values over: JSON parsed, text decoded, the rest as bytes."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        if media == JSON_TYPE:
            return json.loads(raw.decode("utf-8"))
        if media.startswith("text/"):
            return raw.decode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"{name!r} is sent as {media} but is not: {exc}") from exc
    return raw


def _run(service: HandlerService, requests: list[HandlerRequest]) -> list[Outcome]:
    try:
        answers = service.handle_requests(requests)
    except Exception as exc:
        if len(requests) > 1:
            log.warning("batch of %d failed (%s: %s); isolating the failing request",
                        len(requests), type(exc).__name__, exc)
            return [outcome for request in requests for outcome in _run(service, [request])]
        request = requests[0]
        refused = _refusal(request.request_id, exc)
        if refused is not None:
            return [refused]
        log.exception("request %s: the handler raised", request.request_id)
        return [Outcome(request.request_id, error=model_error(exc))]
    return [Outcome(request.request_id, body=answer.body, content_type=answer.content_type,
                    status=answer.status, headers=answer.headers)
            for request, answer in zip(requests, answers)]


def _refusal(request_id: str, exc: Exception) -> Outcome | None:
    """A PredictionException's status and message, as this request's answer."""
    code = getattr(exc, "error_code", None)
    if type(exc).__name__ != "PredictionException" or type(code) is not int \
            or not 400 <= code <= 599:
        return None
    message = str(getattr(exc, "message", exc))[:MAX_MESSAGE_CHARS]
    body = {"code": code, "type": "InvalidInput" if code < 500 else "ModelError",
            "message": message}
    return Outcome(request_id, body=json.dumps(body).encode(), content_type=JSON_TYPE,
                   status=code)

