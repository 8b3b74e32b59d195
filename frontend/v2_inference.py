"""The Open Inference Protocol (KServe v2) inside a frontend, whatever the transport.

REST (frontend/v2_rest.py) and gRPC (frontend/grpc_listener.py) turn their wire form into
an `InferenceRequest` and back; this module checks it against the model's signature, makes
the broker's one request item of it, and turns the worker's output tensors into v2 tensors.

How a model's inputs arrive (docs/protocols.md):
- a JSON-tensor model takes each signature input as an FP32 tensor of the signature's shape
  with any number of rows on axis 0 (-1 in the metadata), up to the model's
  max_batch_size; one row is exactly the array /predict builds from its form field, so
  the two answer the same, and N rows answer as N one-row requests would;
- an image model takes either an encoded JPEG/PNG as a BYTES tensor of shape [1] (or
  [1, 1]), decoded exactly as /predict decodes it (in this frontend, or in the worker where
  workers decode), or a tensor already in the model's input layout (FP32 or UINT8, N x C x
  H x W as the signature says), which skips decoding and the service's preprocessing.
Outputs are the model's output tensors (FP32), or with a class count the classification
extension's "score:index:label" strings.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mxserve.common.config import FRONTEND_WAIT_MARGIN_S, Config
from mxserve.common.errors import InvalidInput
from mxserve.common.signature import Signature, TensorSpec
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog, Snapshot
from mxserve.frontend.decode import Limits, image_input
from mxserve.frontend.exchange import Exchange
from mxserve.frontend.v2_tensors import BYTES, Tensor, datatype_of

PREPROCESSED_TYPES = ("FP32", "UINT8")  # an image model's input, already in its layout
SERVER_NAME = "mxserve"
EXTENSIONS = ("binary_tensor_data", "classification")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST: binary_data (None: the request's default)
    class_count: int = 0  # the classification extension: this many top classes


@dataclass(frozen=True)
class InferenceRequest:
    model: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()  # none: every output
    id: str | None = None
    binary_outputs: bool = False  # REST: the request's binary_data_output parameter
    version: str | None = None  # none: the model's default version


@dataclass
class InferenceAnswer:
    outputs: list[Tensor]
    timing: Mapping[str, Any] = field(default_factory=dict)  # the broker's reply fields
    decoded: float = 0.0  # time.monotonic() when the inputs were ready to send
    model_version: str = ""  # the version that answered


def batch_axis(shape: tuple[int, ...]) -> list[int]:
    """A signature shape in v2 metadata: axis 0 is the batch axis (MMS 0.4 wrote 1 or 0
    there), and 0 elsewhere ("any size") is -1 too."""
    return [-1, *(d if d > 0 else -1 for d in shape[1:])]


def model_metadata(model: str, signature: Signature, versions: list[str]) -> dict[str, Any]:
    """GET /v2/models/<m>: its versions, inputs and outputs from the signature."""
    return {
        "name": model, "versions": versions, "platform": "mxnet_mxnet",
        "inputs": [{"name": s.name, "datatype": "FP32", "shape": batch_axis(s.shape)}
                   for s in signature.inputs],
        "outputs": [{"name": s.name, "datatype": "FP32", "shape": batch_axis(s.shape)}
                    for s in signature.outputs]}


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


class V2Inference:
    """Checks a request against its model, forwards it, and builds the answer."""

    def __init__(self, config: Config, client: BrokerClient, catalog: Catalog,
                 limits: Limits) -> None:
        self.config = config
        self.client = client
        self.catalog = catalog
        self.limits = limits

    def resolve(self, model: str, version: str | None = None
                ) -> tuple[Snapshot, str, Signature]:
        """The snapshot, broker key and signature of a model's version (default: its
        default version); 404 when there is none, 400 for a handler model."""
        snapshot, key = self.catalog.served(model, version)
        signature = snapshot.signatures.get(key)
        if signature is None:
            raise InvalidInput(f"model {model!r} is an MMS 1.x handler, which takes raw "
                               f"requests, not tensors: use POST /predictions/{model}")
        return snapshot, key, signature

    def model_ready(self, model: str, version: str | None = None) -> bool:
        """Whether the model's version (default: its default one) has a ready worker; 404
        for a model or version that is not there. REST and gRPC both answer from this."""
        _, key = self.catalog.served(model, version)
        return self.catalog.fetch().model_ready(key)  # readiness is asked fresh

    def signature(self, model: str, version: str | None = None) -> Signature:
        return self.resolve(model, version)[2]

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        snapshot, _, signature = self.resolve(model, version)
        return model_metadata(model, signature, snapshot.versions(model))

    def infer(self, request: InferenceRequest, exchange: Exchange) -> InferenceAnswer:
        snapshot, key, signature = self.resolve(request.model, request.version)
        exchange.model = key
        names = [spec.name for spec in signature.inputs]
        given = [tensor.name for tensor in request.inputs]
        if sorted(given) != sorted(names):
            raise InvalidInput(f"model {request.model!r} takes inputs {names}, got {given}")
        output_names = [spec.name for spec in signature.outputs]
        wanted: dict[str, int] = {}
        for output in request.outputs:
            if output.name not in output_names:
                raise InvalidInput(f"unknown output {output.name!r}; model {request.model!r} "
                                   f"has {output_names}")
            wanted[output.name] = output.class_count
        arrays, encoded, preprocessed = self._arrays(signature, request.inputs)
        if not encoded:
            _check_rows(request.model, arrays,
                        snapshot.raw["models"].get(key, {}).get("max_batch_size") or 1)
        decoded = time.monotonic()
        budget_s = max(0.001, self.config.request_timeout_s - exchange.waited_s)
        tensors, timing = self.client.infer(
            key, exchange.wire_id, arrays, budget_s,
            budget_s + FRONTEND_WAIT_MARGIN_S, encoded, wanted, preprocessed)
        exchange.timing = timing
        outputs = []
        for name in (wanted or output_names):
            value = tensors.get(name)
            if isinstance(value, bytes):  # classification: N x k strings
                rows = json.loads(value)
                elements = tuple(s.encode() for row in rows for s in row)
                outputs.append(Tensor(name, BYTES, (len(rows), len(rows[0]) if rows else 0),
                                      elements=elements))
            elif isinstance(value, np.ndarray):
                outputs.append(Tensor(name, datatype_of(value.dtype), tuple(value.shape),
                                      array=value))
        version = snapshot.raw["models"].get(key, {}).get("version") or "1"
        return InferenceAnswer(outputs, timing, decoded, version)

    def _arrays(self, signature: Signature, inputs: tuple[Tensor, ...]
                ) -> tuple[dict[str, np.ndarray], bool, bool]:
        """(arrays for the broker, images still encoded, already in the model's layout)."""
        arrays: dict[str, np.ndarray] = {}
        forms = set()
        encoded = False
        for spec in signature.inputs:
            tensor = next(t for t in inputs if t.name == spec.name)
            if signature.is_image and tensor.datatype == BYTES:
                forms.add("encoded")
                arrays[spec.name], encoded = self._image(spec, tensor)
            elif signature.is_image:
                forms.add("preprocessed")
                arrays[spec.name] = _model_layout(spec, tensor)
            else:
                arrays[spec.name] = _json_model_tensor(spec, tensor)
        if len(forms) > 1:
            raise InvalidInput("send every input either as encoded images (BYTES) or as "
                               "tensors in the model's layout, not both")
        return arrays, encoded, forms == {"preprocessed"}

    def _image(self, spec: TensorSpec, tensor: Tensor) -> tuple[np.ndarray, bool]:
        assert tensor.elements is not None
        if tensor.shape not in ((1,), (1, 1)):
            raise InvalidInput(f"input {spec.name!r}: send one encoded image per request "
                               f"(BYTES shape [1]), got shape {list(tensor.shape)}; for a "
                               f"batch send FP32 {batch_axis(spec.shape)} instead")
        data = tensor.elements[0]
        if not data:
            raise InvalidInput(f"input {spec.name!r} is empty")
        by_workers = self.config.images_decoded_by_workers
        return image_input(data, spec, self.limits, decode=not by_workers), by_workers


def _check_rows(model: str, arrays: Mapping[str, np.ndarray], max_batch_size: int) -> None:
    """Axis 0 is -1 in the metadata: any number of rows, the same in every input, up to
    the model's max_batch_size (what one forward is sized for)."""
    rows = {name: int(array.shape[0]) for name, array in arrays.items() if array.ndim}
    if len(set(rows.values())) > 1:
        raise InvalidInput(f"every input of {model!r} must have the same number of rows "
                           f"(axis 0), got {rows}")
    count = next(iter(rows.values()), 1)
    if count > max_batch_size:
        raise InvalidInput(f"{count} rows in one request; model {model!r} takes at most "
                           f"{max_batch_size} (its max_batch_size)")


def _model_layout(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    if tensor.datatype not in PREPROCESSED_TYPES:
        raise InvalidInput(f"input {spec.name!r}: an image model takes BYTES (an encoded "
                           f"image) or {' or '.join(PREPROCESSED_TYPES)} "
                           f"{batch_axis(spec.shape)}, not {tensor.datatype}")
    return _shaped(spec, tensor)


def _json_model_tensor(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input {spec.name!r} is FP32 {batch_axis(spec.shape)}, not "
                           f"{tensor.datatype}")
    return _shaped(spec, tensor)


def _shaped(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    assert tensor.array is not None
    if not spec.accepts_rows(tensor.shape):
        raise InvalidInput(f"input {spec.name!r} has shape {list(tensor.shape)}; the model "
                           f"takes {batch_axis(spec.shape)} (-1: any size)")
    return tensor.array
