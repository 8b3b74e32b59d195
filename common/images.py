"""Encoded JPEG/PNG bytes -> the H x W x C uint8 array a vision model takes (docs/design.md).

Used where the image is decoded: in the frontend, or in the CPU worker that runs the model
(setting `image_decode`; docs/architecture.md, "Where images are decoded"). Either way the
pixels are the same, and so are the answers.

The bytes are sniffed (JPEG and PNG accepted, the declared content type is ignored, anything
else is 415); the size is read from the header and refused (413) before any pixel is
decoded; decoding is strict (a truncated file is 400, never a half-grey prediction); EXIF
orientation is applied as OpenCV (and so MMS 0.4) did; the result is stretch-resized to the
signature's H x W with OpenCV's INTER_CUBIC, exactly MMS 0.4's `imresize(..., interp=2)`
(Pillow decodes JPEG pixel-identically to OpenCV; its bicubic resize differs, so the resize
is OpenCV's).
"""
from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from mxserve.common.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from mxserve.common.signature import TensorSpec

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACCEPTED_FORMATS = ("JPEG", "PNG")
EXIF_ORIENTATION = 0x0112
# Pillow's own bomb guard (warn at 89 Mpx, refuse at 179 Mpx) is replaced by ours, which is
# stricter (max_image_pixels) and answers 413 with the image's size.
Image.MAX_IMAGE_PIXELS = None
# Frontends are many threads in few processes, and CPU workers own their share of the
# cores: OpenCV's own thread pool per resize would only oversubscribe them.
cv2.setNumThreads(1)


def sniff_image(data: Any) -> str:
    head = bytes(memoryview(data)[:len(PNG_MAGIC)])
    if head.startswith(JPEG_MAGIC):
        return "JPEG"
    if head.startswith(PNG_MAGIC):
        return "PNG"
    raise UnsupportedMediaType("the file is not a JPEG or PNG image")


def open_image(data: Any, max_pixels: int) -> Image.Image:
    """The image with only its header read: a JPEG or PNG whose size is within
    `max_pixels` (415, 413 or 400 otherwise). Costs tens of microseconds, not a decode."""
    sniff_image(data)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"the image could not be decoded: {exc}") from exc
    if image.width * image.height > max_pixels:
        raise PayloadTooLarge(f"the image is {image.width}x{image.height} pixels; "
                              f"the limit is {max_pixels} pixels")
    return image


def decode_image(data: Any, spec: TensorSpec, max_pixels: int, draft: bool = False
                 ) -> np.ndarray:
    """Encoded JPEG/PNG (any bytes-like object) -> H x W x C uint8 at the signature's size."""
    height, width = spec.image_size
    image = open_image(data, max_pixels)
    try:
        if draft and image.format == "JPEG":
            # Opt-in. DCT-domain downscaling by 1/2, 1/4 or 1/8, only as far as keeps the
            # image at least the input size: a 4000x3000 photo for a 224x224 input decodes
            # 64x fewer pixels. The result is antialiased where 0.4's bicubic decimation of
            # the full image aliases, so pixels (and answers) move; off by default.
            rotated = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
            image.draft(image.mode, (height, width) if rotated else (width, height))
        image.load()  # strict: a truncated or corrupt file raises here
        # In place and only when needed: the copying forms copy every pixel even when
        # there is nothing to rotate or convert: each copies every pixel.
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


def warm_up() -> None:
    """Decode and resize one small JPEG: the first decode in a process pays for lazy
    library set-up, which belongs to start-up, not to a client's request."""
    sample = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(sample, format="JPEG")
    decode_image(sample.getvalue(), TensorSpec("warm_up", (1, 3, 32, 32)), 64 * 48)
