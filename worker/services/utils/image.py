"""Image helpers with the names and meaning of MMS 0.4's `mms.utils.mxnet.image`.

Custom 0.4 services call `image.read(buf)`, `image.resize(arr, w, h)` and
`image.transform_shape(arr)` in `_preprocess`. In mxserve the frontend has already decoded
the upload to an RGB uint8 HWC array at the signature's size, so `read` accepts that array
as well as encoded bytes, and `resize` to the same size is the identity (OpenCV copies).
"""
from __future__ import annotations

import mxnet as mx
import numpy as np


def read(buf, flag: int = 1, to_rgb: bool = True, out=None) -> mx.nd.NDArray:
    """Encoded bytes -> HWC NDArray (0.4 behaviour); an already-decoded HWC array passes."""
    if isinstance(buf, mx.nd.NDArray):
        return buf
    if isinstance(buf, np.ndarray) and buf.ndim == 3:
        return mx.nd.array(buf, dtype=np.uint8)
    return mx.image.imdecode(buf, flag, to_rgb, out)


def resize(src: mx.nd.NDArray, new_width: int, new_height: int, interp: int = 2) -> mx.nd.NDArray:
    """OpenCV resize; interp 2 is OpenCV's INTER_CUBIC, MMS 0.4's default."""
    if src.shape[0] == new_height and src.shape[1] == new_width:
        return src
    return mx.image.imresize(src, new_width, new_height, interp)


def transform_shape(img_arr: mx.nd.NDArray, dim_order: str = "NCHW") -> mx.nd.NDArray:
    """HWC -> NCHW (or NHWC) with a batch axis of 1."""
    if dim_order not in ("NCHW", "NHWC"):
        raise ValueError("dim_order must be 'NCHW' or 'NHWC'")
    if dim_order == "NCHW":
        img_arr = mx.nd.transpose(img_arr, (2, 0, 1))
    return mx.nd.expand_dims(img_arr, axis=0)


def color_normalize(src: mx.nd.NDArray, mean, std=None) -> mx.nd.NDArray:
    return mx.image.color_normalize(src.astype(np.float32), mean, std)


def fixed_crop(src, x0, y0, w, h, size=None, interp=2):
    return mx.image.fixed_crop(src, x0, y0, w, h, size, interp)
