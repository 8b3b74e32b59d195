"""Turning a predict request's form fields into the arrays a worker expects
(docs/design.md, "HTTP API and errors").

Images (`image/jpeg` signatures): a file part, or a base64 string field as MMS 0.4 allowed.
Decoded here to H x W x C uint8 (common/images.py), or, where CPU workers decode
(`image_decode`), only checked here (JPEG or PNG, size from the header within the limit)
and sent on as its encoded bytes, a 1-D uint8 array the worker decodes with the same code.

JSON tensors (`application/json`): real JSON, nesting bounded before parsing, finite
numbers only, a shape that matches the signature (0 = any; a missing batch axis is added).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from dataclasses import dataclass

import numpy as np

from mxserve.common import images
from mxserve.common.config import Config
from mxserve.common.errors import InvalidInput, PayloadTooLarge
from mxserve.common.signature import Signature, TensorSpec

LARGE_JSON_CHARS = 64 * 1024
_large_parses = threading.Lock()


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 16_000_000
    max_json_depth: int = 32
    max_tensor_elements: int = 500_000
    jpeg_draft: bool = False

    @classmethod
    def of(cls, config: Config) -> Limits:
        """The limits a frontend process applies, from its settings."""
        return cls(max_image_pixels=config.max_image_pixels,
                   max_json_depth=config.max_json_depth, jpeg_draft=config.jpeg_draft,
                   max_tensor_elements=config.max_json_elements)


@dataclass(frozen=True)
class Field:
    """One form value: a file part's bytes or a text field's string."""

    name: str
    data: bytes | str
    is_file: bool


def decode_inputs(signature: Signature, fields: list[Field], limits: Limits,
                  decode_images: bool = True) -> dict[str, np.ndarray]:
    """One array per signature input. With `decode_images` False an image input is its
    checked, still encoded bytes (1-D uint8, no copy), for the worker to decode."""
    expected = [spec.name for spec in signature.inputs]
    unexpected = sorted({f.name for f in fields} - set(expected))
    if unexpected:
        raise InvalidInput(f"unexpected field(s) {unexpected}; this model takes {expected} "
                           "(see /api-description)")
    arrays = {}
    for spec in signature.inputs:
        given = [f for f in fields if f.name == spec.name]
        if not given:
            raise InvalidInput(f"missing field {spec.name!r}: this endpoint expects "
                               f"{expected} as multipart/form-data (see /api-description)")
        if len(given) > 1:
            raise InvalidInput(f"field {spec.name!r} was sent {len(given)} times; send it once")
        if signature.is_image:
            arrays[spec.name] = image_input(_image_bytes(given[0]), spec, limits,
                                            decode_images)
        else:
            arrays[spec.name] = decode_tensor(given[0].data, spec, limits)
    return arrays


def _image_bytes(field: Field) -> bytes:
    if field.is_file:
        data = field.data if isinstance(field.data, bytes) else field.data.encode()
    else:
        text = field.data if isinstance(field.data, str) else field.data.decode("latin-1")
        text = text.strip()
        if text.startswith("data:") and "," in text:  # a data: URL from a browser
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"field {field.name!r} is neither a file nor valid base64") from exc
    if not data:
        raise InvalidInput(f"field {field.name!r} is empty")
    return data


def image_input(data: bytes, spec: TensorSpec, limits: Limits, decode: bool) -> np.ndarray:
    """An encoded image as a worker's input: decoded here (H x W x C uint8), or only checked
    here (JPEG or PNG, size from its header) and sent on encoded (1-D uint8, no copy)."""
    if decode:
        return decode_image(data, spec, limits)
    images.open_image(data, limits.max_image_pixels)
    return np.frombuffer(data, np.uint8)


def decode_image(data: bytes, spec: TensorSpec, limits: Limits) -> np.ndarray:
    """Encoded JPEG/PNG -> H x W x C uint8 at the signature's size, within `limits`."""
    return images.decode_image(data, spec, limits.max_image_pixels, limits.jpeg_draft)


def decode_tensor(data: bytes | str, spec: TensorSpec, limits: Limits) -> np.ndarray:
    try:
        text = data.decode("utf-8", errors="strict") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:  # e.g. an image sent to a JSON-tensor model
        raise InvalidInput(f"field {spec.name!r} must be JSON text (UTF-8), not binary "
                           "data") from exc
    # Every "[" and "," can become a Python object of 30-60 bytes: count them before the
    # parse, so a body of empty lists cannot cost a hundred times its size.
    objects = text.count(",") + text.count("[") + 1
    if objects > limits.max_tensor_elements:
        raise PayloadTooLarge(f"field {spec.name!r} has up to {objects} JSON values; the "
                              f"limit is {limits.max_tensor_elements} (max_json_elements)")
    # One large parse at a time per process bounds the peak memory of concurrent ones.
    guard = _large_parses if len(text) > LARGE_JSON_CHARS else contextlib.nullcontext()
    try:
        with guard:
            value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:  # the C parser stops at Python's recursion limit, fast
        raise InvalidInput(f"field {spec.name!r}: JSON nested too deeply") from exc
    except ValueError as exc:
        raise InvalidInput(f"field {spec.name!r} is not valid JSON: {exc}") from exc
    depth = _leading_depth(value)
    if depth > limits.max_json_depth:
        raise InvalidInput(f"field {spec.name!r}: JSON nested {depth} deep; the limit is "
                           f"{limits.max_json_depth}")
    try:
        array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"field {spec.name!r} must be a rectangular list of numbers") from exc
    if array.size > limits.max_tensor_elements:
        raise PayloadTooLarge(f"field {spec.name!r} has {array.size} numbers; the limit is "
                              f"{limits.max_tensor_elements}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"field {spec.name!r} holds numbers too large for float32")
    if len(spec.shape) == array.ndim + 1 and TensorSpec(spec.name, spec.shape[1:]).accepts(
            array.shape):
        array = array[np.newaxis]  # one sample sent without the batch axis
    if not spec.accepts(array.shape) or array.shape[0] < 1:
        raise InvalidInput(f"field {spec.name!r} has shape {list(array.shape)}; the model "
                           f"expects {list(spec.shape)} (0 = any size)")
    return array


def _leading_depth(value: object) -> int:
    """Nesting depth along the first elements (a ragged tensor fails np.array anyway)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")
