"""An MMS 1.x `.mar` service: `handle(data, context)`, loaded as MMS 1.x loads it.

The manifest's handler is `module:function` (the function is called once with `data=None`
at load, as MMS 1.x does, so it can initialise) or `module` (its one class is constructed
with no arguments, `initialize(context)` is called, and its `handle` serves). The archive's
folder goes first on sys.path, so the handler imports its own helper modules.

A batch is a list of request dicts ({name: value}): a raw body under "body", form fields by
their names; a value is parsed JSON for `application/json`, text for `text/*`, bytes
otherwise. The handler returns one answer per request: bytes as they are, a string as
UTF-8, anything else as JSON (indented as MMS 1.x writes it).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mxserve.common.archive import ModelArchive
from mxserve.common.errors import ArchiveError, ModelError, exception_text
from mxserve.common.version import installed_version
from mxserve.worker.services import mms_alias
from mxserve.worker.services.handler_context import Context
from mxserve.worker.services.handler_metrics import MAX_ENTRIES

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BYTES_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class HandlerRequest:
    request_id: str
    data: Mapping[str, Any]
    headers: Mapping[str, Any]  # as MMS 1.x: header values, and {"content-type": ...} per value


MAX_RESPONSE_HEADERS = 32  # headers a handler may set on one answer, content type aside


@dataclass(frozen=True)
class HandlerAnswer:
    body: bytes
    content_type: str
    status: int
    headers: dict[str, str]


class HandlerService:
    def __init__(self, archive: ModelArchive, gpu: int | None, max_batch_size: int) -> None:
        mar = archive.mar
        if mar is None:
            raise ArchiveError(f"{archive.name} is not an MMS 1.x archive")
        root = str(archive.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        mms_alias.install()
        self.context = Context(archive.name, root, mar.raw, max_batch_size, gpu,
                               installed_version())
        try:
            module = importlib.import_module(mar.module)
        except Exception as exc:  # the handler's own import can raise anything
            raise ArchiveError(f"importing handler module {mar.module!r} failed: "
                               f"{exception_text(exc)}") from exc
        self.entry = self._entry_point(module, mar.function)
        self.recorded: list[list[Any]] = []
        self.dropped_metrics = 0

    def _entry_point(self, module: Any, function: str) -> Callable[[Any, Context], Any]:
        if function:
            entry = getattr(module, function, None)
            if not callable(entry):
                raise ArchiveError(f"handler module {module.__name__!r} has no function "
                                   f"{function!r}")
            self._initialise(lambda: entry(None, self.context))
            return entry
        classes = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                   if cls.__module__ == module.__name__]
        if len(classes) != 1:
            raise ArchiveError(f"handler module {module.__name__!r} must define exactly one "
                               "class or name a function (module:function); it defines "
                               f"{sorted(c.__name__ for c in classes)}")
        service = self._initialise(classes[0])
        if not callable(getattr(service, "handle", None)):
            raise ArchiveError(f"{classes[0].__name__} has no handle(data, context) method")
        initialize = getattr(service, "initialize", None)
        if callable(initialize):
            self._initialise(lambda: initialize(self.context))
        return service.handle

    def _initialise(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ArchiveError:
            raise
        except Exception as exc:
            raise ArchiveError(f"the handler failed to initialise: {exception_text(exc)}"
                               ) from exc

    def handle_requests(self, requests: Sequence[HandlerRequest]) -> list[HandlerAnswer]:
        """One answer per request; raises what the handler raised, or ModelError for an
        answer list of the wrong length or type."""
        self.context.begin_batch([r.request_id for r in requests],
                                 [r.headers for r in requests])
        try:
            answers = self.entry([dict(r.data) for r in requests], self.context)
        finally:
            self._keep_metrics()
        if not isinstance(answers, list) or len(answers) != len(requests):
            got = (f"{len(answers)} answers" if isinstance(answers, list)
                   else f"a {type(answers).__name__}")
            raise ModelError(f"the handler returned {got} for {len(requests)} requests (it "
                             "must return a list with one answer per request)")
        return [self._answer(index, value) for index, value in enumerate(answers)]

    def take_metrics(self) -> tuple[list[list[Any]], int]:
        """What the handler recorded through context.metrics since the last call, and how
        many records were dropped on the way."""
        recorded, dropped = self.recorded, self.dropped_metrics
        self.recorded, self.dropped_metrics = [], 0
        return recorded, dropped

    def _keep_metrics(self) -> None:
        store = self.context.metrics
        if store is None:
            return
        entries = store.entries()
        room = max(0, MAX_ENTRIES - len(self.recorded))
        self.recorded.extend(entries[:room])
        self.dropped_metrics += store.dropped + max(0, len(entries) - room)

    def _answer(self, index: int, value: Any) -> HandlerAnswer:
        if isinstance(value, (bytes, bytearray)):
            body, default_type = bytes(value), BYTES_TYPE
        elif isinstance(value, str):
            body, default_type = value.encode("utf-8"), TEXT_TYPE
        else:
            try:
                body, default_type = json.dumps(value, indent=2).encode("utf-8"), JSON_TYPE
            except (TypeError, ValueError) as exc:
                raise ModelError(f"the handler's answer cannot be sent: {exc}") from exc
        status, _ = self.context.get_response_status(index)
        if type(status) is not int or not 100 <= status <= 599:
            raise ModelError(f"the handler set the response status {status!r}")
        headers = {str(k): str(v) for k, v in
                    list(self.context.get_response_headers(index).items())[
                        :MAX_RESPONSE_HEADERS + 1]
                    if str(k).lower() != "content-type"}
        content_type = self.context.get_response_content_type(index) or default_type
        return HandlerAnswer(body, str(content_type), status,
                             dict(list(headers.items())[:MAX_RESPONSE_HEADERS]))
