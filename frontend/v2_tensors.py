"""Tensors of the Open Inference Protocol (KServe v2), as both transports carry them.

A tensor is a name, a datatype ("FP32", "UINT8", "BYTES", ...), a shape and its elements.
Numeric elements become one ndarray; BYTES elements stay a list of bytes (an encoded image
each, for image models). Elements arrive as JSON (flat or nested lists, row-major), as raw
little-endian bytes (REST's binary tensor data extension, gRPC's raw_input_contents), and
leave the same ways. Every refusal is an InvalidInput naming the tensor.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mxserve.common.errors import InvalidInput, PayloadTooLarge

NUMERIC = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
BYTES = "BYTES"
DATATYPES = (*NUMERIC, BYTES)
_NAMES = {dtype.newbyteorder("<"): name for name, dtype in NUMERIC.items()}
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


@dataclass(frozen=True)
class Tensor:
    """`array` for numeric datatypes, `elements` for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    elements: tuple[bytes, ...] | None = None


def datatype_of(dtype: np.dtype) -> str:
    try:
        return _NAMES[np.dtype(dtype).newbyteorder("<")]
    except KeyError:
        raise InvalidInput(f"no v2 datatype for {dtype}") from None


def checked_shape(name: str, shape: Any, max_elements: int) -> tuple[int, ...]:
    if (not isinstance(shape, (list, tuple)) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise InvalidInput(f"input {name!r}: shape must be a list of up to 8 non-negative "
                           f"integers, got {_shown(shape)}")
    # each dimension alone first: [0, 2**62] holds no element but no array can take it, and
    # a number of thousands of digits cannot even be printed in the message
    if any(d > max_elements for d in shape):
        raise PayloadTooLarge(f"input {name!r}: a dimension is over the limit of "
                              f"{max_elements} elements")
    if math.prod(shape) > max_elements:
        raise PayloadTooLarge(f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} "
                              f"elements; the limit is {max_elements}")
    return tuple(shape)


def _shown(value: Any) -> str:
    """A client's shape for a message, at most 80 characters, whatever numbers it holds."""
    if isinstance(value, (list, tuple)):
        parts = [str(v) if isinstance(v, int) and v.bit_length() <= 64 else
                 "<huge>" if isinstance(v, int) else repr(v)[:20] for v in value[:9]]
        return f"[{', '.join(parts)}]"[:80]
    return repr(value)[:80] if not isinstance(value, int) else "<a number>"


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    """A tensor whose `data` came in the JSON body: flat or nested, row-major."""
    count = math.prod(shape)
    if datatype == BYTES:
        flat = _flatten(name, data)
        if len(flat) != count:
            raise InvalidInput(f"input {name!r}: {len(flat)} elements for shape {list(shape)}")
        elements = []
        for value in flat:
            if not isinstance(value, str):
                raise InvalidInput(f"input {name!r}: BYTES elements in JSON must be strings")
            elements.append(value.encode("utf-8"))
        return Tensor(name, datatype, shape, elements=tuple(elements))
    dtype = _numeric(name, datatype)
    flat = _flatten(name, data)
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: {len(flat)} elements for shape {list(shape)} "
                           f"({count} expected)")
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input {name!r}: BOOL elements must be true or false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise InvalidInput(f"input {name!r}: {datatype} elements must be numbers")
    elif dtype.kind != "f":
        if not all(isinstance(v, int) for v in flat):
            raise InvalidInput(f"input {name!r}: {datatype} elements must be integers")
        bounds = np.iinfo(dtype)
        if flat and not bounds.min <= min(flat) <= max(flat) <= bounds.max:
            raise InvalidInput(f"input {name!r}: a value does not fit {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: a value does not fit {datatype}") from exc
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {name!r}: a value is too large for {datatype}")
    return Tensor(name, datatype, shape, array=array.reshape(shape))


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
             ) -> Tensor:
    """A tensor sent as raw bytes: little-endian, row-major; BYTES length-prefixed."""
    count = math.prod(shape)
    if datatype == BYTES:
        elements = split_bytes(name, raw)
        if len(elements) != count:
            raise InvalidInput(f"input {name!r}: {len(elements)} BYTES elements for shape "
                               f"{list(shape)}")
        return Tensor(name, datatype, shape, elements=tuple(elements))
    dtype = _numeric(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes of data for {datatype} "
                           f"{list(shape)}, which takes {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {name!r} holds NaN or infinity")
    return Tensor(name, datatype, shape, array=array)


def split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """BYTES elements from their wire form: each a 4-byte little-endian length, then it."""
    view = memoryview(raw)
    elements, offset = [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input {name!r}: a BYTES element of {length} bytes runs past "
                               "the end of its data")
        elements.append(bytes(view[offset:offset + length]))
        offset += length
    return elements


def joined_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in their wire form."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def raw_of(tensor: Tensor) -> bytes:
    """An output's elements as raw bytes (binary extension, raw_output_contents)."""
    if tensor.elements is not None:
        return joined_bytes(tensor.elements)
    assert tensor.array is not None
    return np.ascontiguousarray(tensor.array, dtype=NUMERIC[tensor.datatype]).tobytes()


def json_data_of(tensor: Tensor) -> list[Any]:
    """An output's elements as a flat JSON list (row-major)."""
    if tensor.elements is not None:
        return [e.decode("utf-8", errors="replace") for e in tensor.elements]
    assert tensor.array is not None
    return tensor.array.reshape(-1).tolist()


def _numeric(name: str, datatype: str) -> np.dtype:
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; one of "
                           f"{list(DATATYPES)}")
    return dtype


def _flatten(name: str, data: Any) -> list[Any]:
    """Row-major elements of a flat or nested JSON list (nesting is not checked against the
    shape: the protocol allows either form, and the element count is)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a JSON list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) >= 8:
                    raise InvalidInput(f"input {name!r}: data nested too deeply")
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat
