"""Running one batch of requests through a ModelService, one answer or error per request.

Steps, per batch: drop requests whose deadline has passed (504, not executed); decode the
images a frontend sent encoded (setting image_decode: the same code as the frontend's, so
the same pixels; a truncated file is this request's 400); check each request's arrays
against the signature (400, the model never sees them); run the rest
through `service.handle_batch` in one forward; if that raises, run them one by one so a
single bad input fails alone (500 for it, answers for the others); make every answer
msgpack-safe (numpy scalars and arrays become Python numbers and lists).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from mxserve.common.errors import (
    DeadlineExceeded,
    InternalServerError,
    InvalidInput,
    ModelError,
    MXServeError,
    exception_text,
)
from mxserve.common.protocol import (
    ANSWER,
    CONTENT_TYPE,
    HEADERS,
    STATUS,
    Item,
    RequestItem,
    answer_json,
    error_item,
    read_fields,
)
from mxserve.common.settings import BY_NAME
from mxserve.common.signature import Signature, TensorSpec
from mxserve.worker.tensor_answers import checked_outputs, forward_mixed, wants_tensors

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_CHARS = 300  # model exception text sent to clients, trimmed; full text is logged


class ImageLimits(NamedTuple):
    """What this worker decodes an image sent encoded within (its settings of the same
    names: max_image_pixels, jpeg_draft)."""

    max_pixels: int
    draft: bool


DEFAULT_IMAGE_LIMITS = ImageLimits(BY_NAME["max_image_pixels"].default,
                                   BY_NAME["jpeg_draft"].default)


@dataclass(frozen=True)
class Outcome:
    """A request's answer (`result`) or its error, keyed by request id."""

    id: str
    result: Any = None
    error: MXServeError | None = None
    tensors: Mapping[str, Any] | None = None  # output tensors, for those who asked for them
    body: bytes | None = None  # an MMS 1.x handler's answer, with its media type and status
    content_type: str = ""
    status: int = 200
    headers: Mapping[str, str] | None = None  # the other headers a handler set

    def to_item(self, max_bytes: int = 0) -> Item:
        """The wire item: the answer as JSON in a frame of its own (or the output tensors,
        each a frame), or the error; an answer that JSON cannot carry, or one over
        `max_bytes`, is this request's error alone."""
        error = self.error
        if error is None and self.body is not None:
            if not max_bytes or len(self.body) <= max_bytes:
                fields: dict[str, Any] = {CONTENT_TYPE: self.content_type,
                                          STATUS: self.status}
                if self.headers:
                    fields[HEADERS] = dict(self.headers)
                return Item(id=self.id, fields=fields, arrays={ANSWER: self.body})
            error = InternalServerError(f"the answer is {len(self.body)} bytes, over "
                                        f"max_reply_bytes ({max_bytes})")
        if error is None and self.tensors is not None:
            size = sum(len(v) if isinstance(v, bytes) else v.nbytes
                       for v in self.tensors.values())
            if not max_bytes or size <= max_bytes:
                return Item(id=self.id, arrays=self.tensors)
            error = InternalServerError(f"the output tensors are {size} bytes, over "
                                        f"max_reply_bytes ({max_bytes})")
        if error is None:
            try:
                answer = answer_json(self.result)
            except ValueError:
                error = ModelError("the model's answer contains NaN or Infinity, which JSON "
                                   "cannot carry")
            else:
                if not max_bytes or len(answer) <= max_bytes:
                    return Item(id=self.id, arrays={ANSWER: answer})
                error = InternalServerError(f"the answer is {len(answer)} bytes, over "
                                            f"max_reply_bytes ({max_bytes})")
        return error_item(self.id, error)


@dataclass
class BatchTiming:
    decode_ms: float = 0.0  # decoding the images that arrived encoded


def run_batch(service: Any, signature: Signature, items: Sequence[Item],
              deadlines: Sequence[float], timing: BatchTiming | None = None,
              image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> list[Outcome]:
    """`deadlines`: per item, a time.monotonic() value after which it must not run."""
    now = time.monotonic()
    outcomes, runnable = admit_items(
        items, deadlines, lambda item: inputs_in_order(signature, item, image_limits))
    if timing is not None:
        timing.decode_ms = (time.monotonic() - now) * 1000.0
    if runnable:
        for outcome in _run(service, signature, runnable):
            outcomes[outcome.id] = outcome
    return [outcomes[item.id] for item in items]


def admit_items(items: Sequence[Item], deadlines: Sequence[float],
                prepare: Callable[[Item], T]) -> tuple[dict[str, Outcome], list[tuple[Item, T]]]:
    """The items to run, each with what `prepare` made of it; the others' outcomes: 504 for
    one past its deadline (never run), its own error for one `prepare` refused (400, or
    413/415 from an image's header)."""
    outcomes: dict[str, Outcome] = {}
    runnable: list[tuple[Item, T]] = []
    now = time.monotonic()
    for item, deadline in zip(items, deadlines):
        if now >= deadline:
            outcomes[item.id] = Outcome(item.id, error=DeadlineExceeded(
                "the request's deadline passed before a worker could run it"))
            continue
        try:
            runnable.append((item, prepare(item)))
        except MXServeError as exc:
            outcomes[item.id] = Outcome(item.id, error=exc)
    return outcomes, runnable


def inputs_in_order(signature: Signature, item: Item, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
                    ) -> list[np.ndarray]:
    """The item's arrays in signature order, each checked against its TensorSpec."""
    names = [spec.name for spec in signature.inputs]
    extra = sorted(set(item.arrays) - set(names))
    missing = [n for n in names if n not in item.arrays]
    if missing or extra:
        raise InvalidInput(f"expected inputs {names}, got {sorted(item.arrays)}")
    asked = read_fields(RequestItem, item.fields)
    encoded = asked.encoded_images
    ordered = []
    for spec in signature.inputs:
        array = item.arrays[spec.name]
        if asked.preprocessed:
            if array.dtype not in (np.float32, np.uint8) or not spec.accepts_rows(array.shape):
                raise InvalidInput(f"input {spec.name!r} must be float32 or uint8 of shape "
                                   f"[N, {', '.join(map(str, spec.shape[1:]))}] (0 = any), "
                                   f"got {array.dtype} {list(array.shape)}")
        elif signature.is_image:
            if encoded:
                array = decode_sent_image(array, spec, limits)
            expected = (*spec.image_size, spec.channels)
            if array.dtype != np.uint8 or array.shape != expected:
                raise InvalidInput(f"input {spec.name!r} must be a uint8 image of shape "
                                   f"{list(expected)} (H, W, C), got {array.dtype} "
                                   f"{list(array.shape)}")
        elif asked.outputs is not None:  # KServe v2: rows on axis 0, as its metadata says
            if not spec.accepts_rows(array.shape):
                raise InvalidInput(f"input {spec.name!r} must have shape "
                                   f"[N, {', '.join(map(str, spec.shape[1:]))}] (0 = any), "
                                   f"got {list(array.shape)}")
        elif not spec.accepts(array.shape) or array.shape[0] < 1:
            raise InvalidInput(f"input {spec.name!r} must have shape {list(spec.shape)} "
                               f"(0 = any), got {list(array.shape)}")
        ordered.append(array)
    return ordered


def decode_sent_image(data: np.ndarray, spec: TensorSpec, limits: ImageLimits) -> np.ndarray:
    """A JPEG/PNG sent as its bytes (1-D uint8) -> H x W x C uint8, as the frontend would."""
    from mxserve.common import images  # Pillow and OpenCV: only workers of image models load them

    if data.dtype != np.uint8 or data.ndim != 1:
        raise InvalidInput(f"input {spec.name!r}: an encoded image must be 1-D uint8 bytes")
    return images.decode_image(data, spec, limits.max_pixels, limits.draft)


def _run(service: Any, signature: Signature, runnable: list[tuple[Item, list[np.ndarray]]]
         ) -> list[Outcome]:
    try:
        # Reading each item's fields again costs /predict-only batches; a look suffices.
        if any(wants_tensors(item.fields.get("outputs")) for item, _ in runnable):
            asked = [read_fields(RequestItem, item.fields) for item, _ in runnable]
            return _run_mixed(service, signature, runnable, asked)
        answers = service.handle_batch([inputs for _, inputs in runnable])
        if len(answers) != len(runnable):
            raise ModelError(f"the service returned {len(answers)} answers for "
                             f"{len(runnable)} requests")
        return [Outcome(item.id, result=to_wire(answer))
                for (item, _), answer in zip(runnable, answers)]
    except Exception as exc:
        if len(runnable) > 1:
            log.warning("batch of %d failed (%s: %s); isolating the failing request",
                        len(runnable), type(exc).__name__, exc)
            return [outcome for pair in runnable for outcome in _run(service, signature, [pair])]
        item = runnable[0][0]
        log.exception("request %s: the model's code raised", item.id)
        return [Outcome(item.id, error=model_error(exc))]


def _run_mixed(service: Any, signature: Signature,
               runnable: list[tuple[Item, list[np.ndarray]]], asked: list[RequestItem]
               ) -> list[Outcome]:
    """One forward for requests that want the service's answer and those that want the
    output tensors (worker/tensor_answers.py)."""
    names = [spec.name for spec in signature.outputs]
    answer_items, tensor_items = [], []
    for (item, inputs), fields in zip(runnable, asked):
        if wants_tensors(fields.outputs):
            tensor_items.append((item, (inputs, fields.preprocessed,
                                        checked_outputs(fields.outputs, names))))
        else:
            answer_items.append((item, inputs))
    answers, tensors = forward_mixed(service, [inputs for _, inputs in answer_items],
                                     [request for _, request in tensor_items])
    outcomes = {item.id: Outcome(item.id, result=to_wire(answer))
                for (item, _), answer in zip(answer_items, answers)}
    outcomes.update({item.id: Outcome(item.id, tensors=arrays)
                     for (item, _), arrays in zip(tensor_items, tensors)})
    return [outcomes[item.id] for item, _ in runnable]


def model_error(exc: Exception) -> MXServeError:
    """What a service raised, as its request's error (its text trimmed for the client)."""
    if isinstance(exc, MXServeError):
        return exc
    return ModelError("the model raised " + exception_text(exc)[:MAX_MESSAGE_CHARS])


def to_wire(value: Any) -> Any:
    """Convert a service's answer into plain msgpack/JSON types; refuse what cannot be."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "asnumpy"):  # mx.nd.NDArray
        return value.asnumpy().tolist()
    if isinstance(value, (list, tuple, map)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise ModelError(f"the service returned a {type(value).__name__}, which cannot be sent "
                     "as JSON")
