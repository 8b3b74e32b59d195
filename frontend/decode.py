"""Decoding request inputs into the arrays a worker expects (the frontend's job, DESIGN §1).

Images: the bytes are sniffed (JPEG and PNG accepted, anything else is 415), the header
is read to refuse oversize images before decoding, then the image is decoded to RGB and
stretch-resized to the signature's H x W with OpenCV's INTER_CUBIC, exactly as MMS 0.4's
`mx.image.imresize(..., interp=2)` did, giving an H x W x C uint8 array.
"""
from __future__ import annotations

import cv2
import numpy as np

from common.errors import InvalidInput, UnsupportedMediaType

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_image(data: bytes) -> str:
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    raise UnsupportedMediaType("the file is not a JPEG or PNG image")


def decode_image(data: bytes, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> height x width x channels uint8 (RGB or gray)."""
    sniff_image(data)
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if decoded is None:
        raise InvalidInput("the image could not be decoded (corrupt or truncated)")
    if channels == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if decoded.shape[:2] != (height, width):
        decoded = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_CUBIC)
    return decoded.reshape(height, width, channels)
