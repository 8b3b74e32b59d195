"""Turning a predict request's form fields into the arrays a worker expects (DESIGN §1, §4).

Images (`image/jpeg` signatures): a file part, or a base64 string field as MMS 0.4 allowed.
The bytes are sniffed (JPEG and PNG accepted, the declared content type is ignored, anything
else is 415); the size is read from the header and refused (413) before any pixel is
decoded; decoding is strict (a truncated file is 400, never a half-grey prediction); EXIF
orientation is applied as OpenCV (and so MMS 0.4) did; the result is stretch-resized to the
signature's H x W with OpenCV's INTER_CUBIC, exactly MMS 0.4's `imresize(..., interp=2)`
(Pillow decodes JPEG pixel-identically to OpenCV; its bicubic resize differs, so the resize
is OpenCV's). Output: an H x W x C uint8 array (RGB, or gray for 1-channel signatures).

JSON tensors (`application/json`): real JSON, nesting bounded before parsing, finite
numbers only, a shape that matches the signature (0 = any; a missing batch axis is added).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
import cv2
import numpy as np
from PIL import Image, ImageOps

from common.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from common.signature import Signature, TensorSpec

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACCEPTED_FORMATS = {"JPEG", "PNG"}
EXIF_ORIENTATION = 0x0112
# Pillow's own bomb guard (warn at 89 Mpx, refuse at 179 Mpx) is replaced by ours, which is
# stricter (max_image_pixels) and answers 413 with the image's size.
Image.MAX_IMAGE_PIXELS = None
# Frontends are many threads in few processes on cores the workers need: OpenCV's own
# thread pool per resize would only oversubscribe them.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 16_000_000
    max_json_depth: int = 32
    max_tensor_elements: int = 16_000_000
    jpeg_draft: bool = False


@dataclass(frozen=True)
class Field:
    """One form value: a file part's bytes or a text field's string."""

    name: str
    data: bytes | str
    is_file: bool


def decode_inputs(signature: Signature, fields: list[Field], limits: Limits
                  ) -> dict[str, np.ndarray]:
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
            arrays[spec.name] = decode_image(_image_bytes(given[0]), spec, limits)
        else:
            arrays[spec.name] = decode_tensor(given[0].data, spec, limits)
    return arrays


def warm_up() -> None:
    """Decode and resize one small JPEG: the first decode in a process pays ~25 ms of lazy
    library set-up (measured), which belongs to start-up, not to a client's request."""
    sample = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(sample, format="JPEG")
    decode_image(sample.getvalue(), TensorSpec("warm_up", (1, 3, 32, 32)), Limits())


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


def sniff_image(data: bytes) -> str:
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    raise UnsupportedMediaType("the file is not a JPEG or PNG image")


def decode_image(data: bytes, spec: TensorSpec, limits: Limits) -> np.ndarray:
    """Encoded JPEG/PNG -> H x W x C uint8 at the signature's size."""
    sniff_image(data)
    height, width = spec.image_size
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
        if image.width * image.height > limits.max_image_pixels:
            raise PayloadTooLarge(f"the image is {image.width}x{image.height} pixels; "
                                  f"the limit is {limits.max_image_pixels} pixels")
        if limits.jpeg_draft and image.format == "JPEG":
            # Opt-in. DCT-domain downscaling by 1/2, 1/4 or 1/8, only as far as keeps the
            # image at least the input size: a 4000x3000 photo for a 224x224 input decodes
            # 64x fewer pixels. The result is antialiased where 0.4's bicubic decimation of
            # the full image aliases, so pixels (and answers) move; off by default.
            rotated = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
            image.draft(image.mode, (height, width) if rotated else (width, height))
        image.load()  # strict: a truncated or corrupt file raises here
        # In place and only when needed: the copying forms copy every pixel even when
        # there is nothing to rotate or convert (0.2-0.4 ms on a 640x427 photo).
        ImageOps.exif_transpose(image, in_place=True)
        mode = "RGB" if spec.channels == 3 else "L"
        if image.mode != mode:
            image = image.convert(mode)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"the image could not be decoded: {exc}") from exc
    pixels_hwc = np.asarray(image)
    if pixels_hwc.shape[:2] != (height, width):
        pixels_hwc = cv2.resize(pixels_hwc, (width, height), interpolation=cv2.INTER_CUBIC)
    return pixels_hwc.reshape(height, width, spec.channels)


def decode_tensor(data: bytes | str, spec: TensorSpec, limits: Limits) -> np.ndarray:
    try:
        text = data.decode("utf-8", errors="strict") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:  # e.g. an image sent to a JSON-tensor model
        raise InvalidInput(f"field {spec.name!r} must be JSON text (UTF-8), not binary "
                           "data") from exc
    try:
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
