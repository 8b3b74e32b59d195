"""The Open Inference Protocol's (KServe v2) REST routes, as direct routes of the request
path: health, server and model metadata, and inference with JSON tensors or the binary
tensor data extension (`Inference-Header-Content-Length`). Errors are {"error": "..."}
(frontend/protocol_errors.py's table, applied to every failure under /v2).
"""
from __future__ import annotations

import json
import time
from typing import Any

from mxserve.common.errors import InvalidInput, PayloadTooLarge, ServiceUnavailable
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.exchange import Exchange, json_bytes, server_timing
from mxserve.frontend.form import read_body
from mxserve.frontend.request_path import DirectRoute, Headers
from mxserve.frontend.v2_inference import (
    InferenceAnswer,
    InferenceRequest,
    RequestedOutput,
    V2Inference,
    server_metadata,
)
from mxserve.frontend.v2_tensors import (
    DATATYPES,
    checked_shape,
    from_json,
    from_raw,
    json_data_of,
    raw_of,
)

HEADER_LENGTH = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"  # the binary extension's header
OCTETS = ("Content-Type", "application/octet-stream")


def v2_routes(inference: V2Inference, catalog: Catalog, version: str,
              max_body_bytes: int, max_elements: int) -> list[DirectRoute]:
    def live(environ: dict[str, Any], exchange: Exchange, headers: Headers) -> bytes:
        return json_bytes({"live": True})

    def ready(environ: dict[str, Any], exchange: Exchange, headers: Headers) -> bytes:
        snapshot = catalog.fetch()
        if not snapshot.serving:
            why = ("shutting down" if snapshot.raw["draining"]
                   else "a required model has no ready worker")
            raise ServiceUnavailable(f"the server is not ready: {why}")
        return json_bytes({"ready": True})

    def model_ready(environ: dict[str, Any], exchange: Exchange, headers: Headers,
                    model: str, model_version: str | None = None) -> bytes:
        if not inference.model_ready(model, model_version):
            raise ServiceUnavailable(f"model {model!r} has no ready worker")
        return json_bytes({"name": model, "ready": True})

    def server(environ: dict[str, Any], exchange: Exchange, headers: Headers) -> bytes:
        return json_bytes(server_metadata(version))

    def metadata(environ: dict[str, Any], exchange: Exchange, headers: Headers,
                 model: str, model_version: str | None = None) -> bytes:
        return json_bytes(inference.metadata(model, model_version))

    def infer(environ: dict[str, Any], exchange: Exchange, headers: Headers,
              model: str, model_version: str | None = None) -> bytes:
        body = read_body(environ, max_body_bytes)
        request = parse_request(model, body, environ.get(HEADER_LENGTH), max_elements,
                                model_version)
        parsed = time.monotonic()
        answer = inference.infer(request, exchange)
        headers.append(("Server-Timing", server_timing(exchange, parsed, answer.decoded,
                                                       answer.timing)))
        return render_answer(request, answer, headers)

    return [
        DirectRoute("v2_live", "/v2/health/live", ("GET",), live, is_prediction=False),
        DirectRoute("v2_ready", "/v2/health/ready", ("GET",), ready, is_prediction=False),
        DirectRoute("v2_server", "/v2", ("GET",), server, is_prediction=False),
        DirectRoute("v2_model_ready", "/v2/models/<model>/ready", ("GET",), model_ready,
                    is_prediction=False),
        DirectRoute("v2_model", "/v2/models/<model>", ("GET",), metadata, is_prediction=False),
        DirectRoute("v2_infer", "/v2/models/<model>/infer", ("POST",), infer,
                    protocol="v2-rest"),
        DirectRoute("v2_version_ready", f"{VERSION_PATH}/ready", ("GET",), model_ready,
                    is_prediction=False),
        DirectRoute("v2_version", VERSION_PATH, ("GET",), metadata, is_prediction=False),
        DirectRoute("v2_version_infer", f"{VERSION_PATH}/infer", ("POST",), infer,
                    protocol="v2-rest"),
    ]


VERSION_PATH = "/v2/models/<model>/versions/<model_version>"


def parse_request(model: str, body: bytes, header_length: str | None,
                  max_elements: int, version: str | None = None) -> InferenceRequest:
    """An inference request from its REST body: JSON, then (with the binary extension)
    the tensors' bytes in input order."""
    json_part, binary = _split(body, header_length)
    text = json_part.decode("utf-8", errors="replace")
    if text.count(",") + text.count("[") + 1 > max_elements:
        raise PayloadTooLarge(f"the request's JSON holds more than {max_elements} values "
                              "(max_json_elements); send large tensors as binary data")
    try:
        document = json.loads(json_part, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidInput("the request's JSON is nested too deeply") from exc
    except ValueError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput("the request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput('the request needs "inputs", a non-empty list')
    inputs, offset = [], 0
    for raw in raw_inputs:
        name, datatype, shape, parameters = _input_header(raw, max_elements)
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative "
                                   "integer")
            if offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the "
                                   f"end of the body ({len(binary) - offset} bytes left)")
            inputs.append(from_raw(name, datatype, shape, binary[offset:offset + size]))
            offset += size
        elif "data" in raw:
            inputs.append(from_json(name, datatype, shape, raw["data"]))
        else:
            raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    parameters = _parameters(document, "the request")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput("binary_data_output must be true or false")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    return InferenceRequest(model, tuple(inputs), _outputs(document), request_id,
                            binary_default, version)


def render_answer(request: InferenceRequest, answer: InferenceAnswer,
                  headers: Headers) -> bytes:
    binary_of = {o.name: o.binary for o in request.outputs}
    outputs, raw_parts = [], []
    for tensor in answer.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        binary = binary_of.get(tensor.name)
        if binary is None:
            binary = request.binary_outputs
        if binary:
            raw = raw_of(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raw_parts.append(raw)
        else:
            entry["data"] = json_data_of(tensor)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": request.model,
                                "model_version": answer.model_version or "1"}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = outputs
    body = json.dumps(document, separators=(",", ":")).encode()
    if not raw_parts:
        return body
    headers.append(("Inference-Header-Content-Length", str(len(body))))
    headers.append(OCTETS)
    return body + b"".join(raw_parts)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length {header_length[:32]!r} is not "
                           "a number") from None
    if length < 0 or length > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {length}, but the body has "
                           f"{len(body)} bytes")
    return body[:length], body[length:]


def _input_header(raw: Any, max_elements: int) -> tuple[str, str, tuple[int, ...], dict]:
    if not isinstance(raw, dict):
        raise InvalidInput("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("each input needs a name")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: datatype must be one of {list(DATATYPES)}, got "
                           f"{datatype!r}")
    shape = checked_shape(name, raw.get("shape"), max_elements)
    return name, datatype, shape, _parameters(raw, f"input {name!r}")


def _outputs(document: dict[str, Any]) -> tuple[RequestedOutput, ...]:
    raw_outputs = document.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidInput('"outputs" must be a list')
    outputs = []
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput("each requested output must be an object with a name")
        parameters = _parameters(raw, f"output {raw['name']!r}")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output {raw['name']!r}: binary_data must be true or false")
        count = parameters.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidInput(f"output {raw['name']!r}: classification must be a "
                               "non-negative integer")
        outputs.append(RequestedOutput(raw["name"], binary, count))
    return tuple(outputs)


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = owner.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{what}: parameters must be a JSON object")
    return parameters


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")
