"""The `context` an MMS 1.x handler receives: the same attributes and methods as MMS 1.x's
`mms.context.Context`, so `handle(data, context)` services run unchanged.

`model_name` is the name the model is served under; `manifest` is the archive's own
MAR-INF/MANIFEST.json (services build file names from its modelName); `system_properties`
holds model_dir, gpu_id, batch_size, server_name and server_version. For each request of a
batch, `request_processor[i]` holds its headers (and, as MMS 1.x, each value's
`{"content-type": ...}` under the value's name) and collects the status and headers the
service sets for its answer; `metrics` is a fresh store per batch
(worker/services/handler_metrics.py).

One deliberate superset: `request_processor` is a list, as in MMS 1.x, that also answers
`report_status(code, phrase)` for every request of the batch. MMS 1.x's own template calls
it that way in its error path, which fails there with an AttributeError.
"""
from __future__ import annotations

from typing import Any, Mapping

from mxserve.worker.services.handler_metrics import MetricsStore


class RequestProcessor:
    """One request's headers in, its answer's status and headers out."""

    def __init__(self, request_headers: Mapping[str, Any]) -> None:
        self._request_headers = _CaseInsensitive(request_headers)
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_headers: dict[str, str] = {}

    def get_request_property(self, key: str) -> Any:
        return self._request_headers.get(key)

    def get_request_properties(self) -> Mapping[str, Any]:
        return self._request_headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_headers[key.lower()] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_headers

    def get_response_header(self, key: str) -> str | None:
        return self._response_headers.get(key.lower())


class RequestProcessors(list):
    """One RequestProcessor per request of the batch."""

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        for processor in self:
            processor.report_status(code, reason_phrase)


class Context:
    def __init__(self, model_name: str, model_dir: str, manifest: Mapping[str, Any],
                 batch_size: int, gpu: int | None, server_version: str) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {"model_dir": model_dir, "gpu_id": gpu,
                                   "batch_size": batch_size, "server_name": "mxserve",
                                   "server_version": server_version}
        self.request_ids: dict[int, str] | None = None
        self.request_processor: RequestProcessors | None = None
        self.metrics: MetricsStore | None = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    def begin_batch(self, request_ids: list[str], headers: list[Mapping[str, Any]]) -> None:
        self.request_ids = dict(enumerate(request_ids))
        self.request_processor = RequestProcessors(RequestProcessor(h) for h in headers)
        self.metrics = MetricsStore(self.request_ids, self.model_name)

    def get_request_id(self, idx: int = 0) -> str | None:
        return (self.request_ids or {}).get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self._processor(idx).get_request_property(key)

    def get_all_request_header(self, idx: int) -> Mapping[str, Any]:
        return self._processor(idx).get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self._processor(idx).get_response_header("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self._processor(idx)
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self._processor(idx).report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor or []:
            processor.report_status(code, phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._processor(idx).get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._processor(idx).add_response_property(key, value)

    def _processor(self, idx: int) -> RequestProcessor:
        if self.request_processor is None:
            raise RuntimeError("no request is being handled")
        return self.request_processor[idx]


class PredictionException(Exception):
    """Raised by a handler for a request it refuses: `error_code` is the HTTP status."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


class _CaseInsensitive(dict):
    """HTTP header names as the client sent them, matched in whatever case the service
    asks."""

    def __init__(self, headers: Mapping[str, Any]) -> None:
        super().__init__(headers)
        self._names = {str(k).lower(): k for k in headers}

    def get(self, key: Any, default: Any = None) -> Any:
        name = self._names.get(str(key).lower())
        return default if name is None else super().__getitem__(name)

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._names[str(key).lower()])

    def __contains__(self, key: object) -> bool:
        return str(key).lower() in self._names
