"""Echoes what MMS 1.x's Context shows a handler and acts on what the request asks.

Each request's `action` value (a query parameter or a form field) picks what to do:
`status` sets `code` and `phrase` on this answer, `all_status` on every answer of the
batch, `type` sets the answer's content type, `header` adds the response header X-Echo,
`bytes` / `text` answer bytes / a string instead of JSON, `refuse` raises
PredictionException(`code`), `raise` raises ValueError, `wrong_count` answers no list
entries at all. Every batch records metrics of each kind through context.metrics.
"""
from mms.metrics.dimension import Dimension
from mms.service import PredictionException

SHOWN_HEADERS = ("x-trace", "content-type", "accept")


class EchoService:
    def __init__(self):
        self.initialized = False
        self.loads = 0

    def initialize(self, context):
        self.loads += 1
        self.batch_size = context.system_properties["batch_size"]
        self.manifest_name = context.manifest["model"]["modelName"]
        self.initialized = True

    def handle(self, data, context):
        metrics = context.metrics
        metrics.add_counter("EchoRequests", len(data), dimensions=[Dimension("Route", "echo")])
        answers = []
        for idx, request in enumerate(data):
            action = _text(request.get("action"))
            code = int(_text(request.get("code")) or 200)
            phrase = _text(request.get("phrase")) or ""
            metrics.add_time("EchoTime", 1.5, idx=idx)
            metrics.add_size("EchoSize", sum(len(_bytes(v)) for v in request.values()) / 1024.0,
                             idx=idx, unit="kB")
            metrics.add_percent("EchoShare", 100.0 / len(data), idx=idx)
            metrics.add_metric("EchoValues", len(request), idx=idx, unit="values")
            if action == "refuse":
                metrics.add_error("EchoRefused", "asked to refuse")
                raise PredictionException("asked to refuse", code)
            if action == "raise":
                raise ValueError("asked to raise")
            if action == "wrong_count":
                return []
            if action == "status":
                context.set_response_status(code, phrase, idx)
            if action == "all_status":
                context.set_all_response_status(code, phrase)
            if action == "type":
                context.set_response_content_type(idx, _text(request.get("media")))
            if action == "header":
                context.set_response_header(idx, "X-Echo", _text(request.get("echo")))
            processor = context.request_processor[idx]
            everything = context.get_all_request_header(idx)
            seen = {
                "model_name": context.model_name,
                "manifest_name": self.manifest_name,
                "batch_size": self.batch_size,
                "loads": self.loads,
                "has_request_id": bool(context.get_request_id(idx)),
                "headers": {name: context.get_request_header(idx, name)
                            for name in ("X-Trace", "x-trace", "Content-Type")},
                "header_names": sorted(k.lower() for k in everything
                                       if k.lower() in SHOWN_HEADERS or k in request),
                "value_types": {name: processor.get_request_property(name)
                                for name in sorted(request)},
                "values": {name: _shown(value) for name, value in sorted(request.items())},
            }
            if action == "bytes":
                answers.append(b"\x00echo\xff")
            elif action == "text":
                answers.append("echo \u00e9")
            else:
                answers.append(seen)
        return answers


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return value


def _bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return value
    return str(value).encode("utf-8")


def _shown(value):
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", len(value), value[:16].decode("latin-1")]
    return [type(value).__name__, value]


_service = EchoService()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
