"""The wire protocol between frontends, broker and workers (docs/design.md, "Wire protocol").

A message is one ZeroMQ multipart message (after any ROUTER identity envelope):

    frame 0   TAG        b"MXS" + protocol version byte
    frame 1   header     msgpack map:
                           {"k": kind,                       # Kind, an int
                            "f": {...},                      # the kind's fields (below)
                            "i": [{"id": request id,         # items: the requests of a batch
                                   "f": {...},               #   RequestItem, or an answer's
                                                             #   "error" / "result"
                                   "a": [[name, dtype, shape], ...]}, ...]}
    frame 2.. one raw C-contiguous buffer per array, in item order, then array order

Arrays never go through msgpack: they travel as their own frames (zero-copy on send above
pyzmq's copy threshold) and the receiver builds each ndarray over its frame without copying.
Only plain numeric dtypes cross the wire; object dtypes (pickle) are refused. A worker's
answer is JSON bytes in a frame of its own (dtype "json", shape [length]), so no answer is
bounded by the header's cap and the frontend writes those bytes into its response as they
are. Decoding is strict and raises `ProtocolError`; the receiver logs, counts and drops
such a message.

Each kind's fields are declared once, below, as a NamedTuple: senders build one and send
`fields_of(it)`; receivers `read_fields(Record, message.fields)`, which checks every type
and raises ProtocolError. Errors travel per item (`error_item` / `item_error`), through
the one `to_wire` / `error_from_wire` pair of common/errors.py.
"""
from __future__ import annotations

import enum
import json
import math
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence, TypeVar, get_type_hints

import msgpack
import numpy as np

from mxserve.common.errors import MXServeError, ProtocolError, error_from_wire

VERSION = 1
TAG = b"MXS" + bytes([VERSION])

MAX_HEADER_BYTES = 1024 * 1024  # names, shapes and JSON-able results; arrays are not in here
MAX_ARRAYS = 4096  # 256 requests x 16 inputs, far above any batch we send
MAX_RANK = 8
MAX_ID_CHARS = 128

# Little-endian / byte-order-free numeric dtypes only: the machines we run on are little-endian.
_DTYPES = {np.dtype(name).str: np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64")}
ALLOWED_DTYPES = frozenset(_DTYPES)


class Kind(enum.IntEnum):
    READY = 1  # worker -> broker: Ready
    HEARTBEAT = 2  # both ways, no fields
    REQUEST = 3  # frontend -> broker (one item), broker -> worker (a batch): Request,
    #              each item's fields a RequestItem
    REPLY = 4  # worker -> broker -> frontend: Reply; per item an ANSWER array or an error
    DISCONNECT = 6  # either side is going away: Disconnect
    CATALOG = 7  # frontend -> broker: which models, signatures, ready workers; the reply
    #              item's RESULT field holds it
    MANAGE = 8  # management commands, on their own socket: each item's fields a Manage;
    #             the reply item's RESULT or error
    # 5 was a whole-message error, never sent: errors are per item.


ANSWER = "answer"  # the array name of a worker's answer: JSON, or a handler's own bytes
JSON_DTYPE = "json"  # the dtype tag of a frame of answer bytes (UTF-8 JSON but for handlers)
RESULT = "result"  # the item field of a CATALOG or MANAGE reply's result
ERROR = "error"  # the item field of an error, as MXServeError.to_wire() writes it
CONTENT_TYPE = "content_type"  # reply item field: an MMS 1.x handler's answer's media type
STATUS = "status"  # reply item field: the HTTP status an MMS 1.x handler set
HEADERS = "headers"  # reply item field: the other response headers an MMS 1.x handler set


_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Immutable records built several times per request on every hop: NamedTuples, which
# construct in C (a frozen dataclass sets each field through object.__setattr__).


class Item(NamedTuple):
    """One request inside a message: its id, its fields and its named arrays (an ndarray,
    or `bytes` of JSON for an answer)."""

    id: str
    fields: Mapping[str, Any] = _EMPTY
    arrays: Mapping[str, Any] = _EMPTY


class Message(NamedTuple):
    kind: Kind
    fields: Mapping[str, Any] = _EMPTY
    items: Sequence[Item] = ()


Frame = bytes | memoryview


# -- each kind's fields, declared once ---------------------------------------------------

class Ready(NamedTuple):
    model: str
    device: str = "?"
    pid: int = 0
    max_batch_size: int = 1
    threads: int = 0  # its share of the cores; 0: lend it nothing


class Request(NamedTuple):
    model: str
    threads: int = 0  # broker -> worker: the cores lent for this batch, when more than its own


class RequestItem(NamedTuple):
    budget_ms: float = math.inf  # what is left of the request's deadline
    encoded_images: bool = False  # its images are still JPEG/PNG: the worker decodes them
    # None: the service's JSON answer (/predict). A map {output name: class count}: the
    # model's output tensors ({} all of them), a count > 0 giving its top classes instead.
    outputs: Any = None
    preprocessed: bool = False  # its tensors are in the model's input layout already
    # An MMS 1.x handler's request: {name: content type} of its values, each sent as the
    # uint8 array of that name; None for a tensor request.
    parameters: Any = None
    headers: Any = None  # an MMS 1.x handler's request: {header name: value}


class Reply(NamedTuple):
    batch_size: int = 0
    inference_ms: float = 0.0
    decode_ms: float = 0.0  # decoding images that arrived encoded
    worker_ms: float = 0.0  # broker -> frontend: the hop to the worker and back, inference in
    queue_ms: float = 0.0  # broker -> frontend: waiting in the broker's queue
    # worker -> broker: what an MMS 1.x handler recorded through context.metrics, as
    # [kind, name, unit, [[dimension, value], ...], value] entries, and how many it dropped
    handler_metrics: Any = None
    handler_metrics_dropped: int = 0


class Disconnect(NamedTuple):
    reason: str = ""  # "unknown": the broker forgot this worker, which re-registers
    model: str = ""
    load_error: str = ""  # a worker about to exit 3: why its model cannot load


def version_key(name: str, version: str) -> str:
    """The broker's key of a model's later version (its first keeps the plain name); model
    names cannot hold '@', so a key splits back into both."""
    return f"{name}@{version}"


def key_parts(key: str) -> tuple[str, str]:
    """(name, version) of a key; version "" for a model's first version."""
    name, _, version = key.partition("@")
    return name, version


class Manage(NamedTuple):
    op: str  # register, unregister, scale, set_default
    name: str = ""  # register: the model's name; the others: its key (name@version or name)
    folder: str = ""  # register: the archive the management listener extracted
    workers: Any = None  # these three are checked by the broker, with messages of their own
    max_batch_size: Any = None
    max_batch_delay_ms: Any = None
    source: str = ""  # register: the path or URL it came from, as the management API lists it


R = TypeVar("R", bound=tuple)
_REQUIRED = object()


def _field_specs(record: type) -> tuple[tuple[str, frozenset[type] | None, Any], ...]:
    """(name, the exact types it may have or None for any, its default) per field. Exact
    types, because msgpack decodes to exact ints, floats, bools and strs, and a bool must
    never pass for a number; a float field also takes an int."""
    hints = get_type_hints(record)
    defaults = record._field_defaults  # type: ignore[attr-defined]
    specs = []
    for name in record._fields:  # type: ignore[attr-defined]
        kind = hints[name]
        allowed = None if kind is Any else frozenset((int, float) if kind is float else (kind,))
        specs.append((name, allowed, defaults.get(name, _REQUIRED)))
    return tuple(specs)


_SPECS: dict[type, tuple[tuple[str, frozenset[type] | None, Any], ...]] = {
    record: _field_specs(record)
    for record in (Ready, Request, RequestItem, Reply, Disconnect, Manage)}


def read_fields(record: type[R], fields: Mapping[str, Any]) -> R:
    """A kind's fields as its record; ProtocolError for a wrong type or a missing field
    (fields it does not declare are ignored). Run several times per request on every hop,
    so the record is built as a tuple directly rather than through its keyword __new__."""
    values = []
    for name, allowed, default in _SPECS[record]:
        value = fields.get(name, _REQUIRED)
        if value is _REQUIRED:
            if default is _REQUIRED:
                raise ProtocolError(f"{record.__name__}: field {name!r} is missing")
            value = default
        elif allowed is not None and type(value) not in allowed:
            raise ProtocolError(f"{record.__name__}: field {name!r} has the wrong type "
                                f"({type(value).__name__})")
        values.append(value)
    return tuple.__new__(record, values)


def fields_of(record: NamedTuple) -> dict[str, Any]:
    return dict(zip(record._fields, record))


def error_item(item_id: str, error: MXServeError) -> Item:
    return Item(item_id, {ERROR: error.to_wire()})


def item_error(item: Item) -> MXServeError | None:
    """The error an item carries, if any (a malformed one is our own fault: 500)."""
    raw = item.fields.get(ERROR)
    return None if raw is None else error_from_wire(raw)



def to_frames(message: Message) -> list[Frame]:
    """Encode a message; array frames are memoryviews over the arrays (no copy)."""
    buffers: list[Frame] = []
    items = []
    for item in message.items:
        descriptors = []
        for name, array in item.arrays.items():
            if isinstance(array, bytes):
                descriptors.append([name, JSON_DTYPE, [len(array)]])
                buffers.append(array)
                continue
            array = np.ascontiguousarray(array)
            if array.dtype.str not in ALLOWED_DTYPES:
                native = array.dtype.newbyteorder("=")
                if native.str not in ALLOWED_DTYPES:
                    raise ProtocolError(f"array {name!r} has dtype {array.dtype}, which cannot "
                                        "cross the wire")
                array = array.astype(native)
            descriptors.append([name, array.dtype.str, list(array.shape)])
            buffers.append(array.data.cast("B") if array.size else b"")
        items.append({"id": item.id, "f": dict(item.fields), "a": descriptors})
    header = {"k": int(message.kind), "f": dict(message.fields), "i": items}
    return [TAG, msgpack.packb(header, use_bin_type=True), *buffers]


def from_frames(frames: Sequence[Any]) -> Message:
    """Decode frames (bytes, memoryviews or zmq.Frame); raise ProtocolError if malformed."""
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frames, needs at least 2")
    tag = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(_buffer(frames[0]))
    if tag != TAG:
        raise ProtocolError(f"unknown protocol tag {tag[:8]!r} (expected {TAG!r})")
    header_bytes = _buffer(frames[1])
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header_bytes)} bytes is over the limit")
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
        raise ProtocolError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    try:
        kind = Kind(int(header["k"]) if type(header.get("k")) is int else -1)
    except ValueError as exc:
        raise ProtocolError(f"unknown message kind {header.get('k')!r}") from exc
    fields = _map(header.get("f", {}), "fields")
    raw_items = header.get("i", [])
    if not isinstance(raw_items, list):
        raise ProtocolError("items is not a list")
    buffers = frames[2:]
    if len(buffers) > MAX_ARRAYS:
        raise ProtocolError(f"{len(buffers)} array frames is over the limit of {MAX_ARRAYS}")
    next_buffer = 0
    items = []
    for raw in raw_items:
        raw = _map(raw, "item")
        item_id = raw.get("id")
        if not isinstance(item_id, str) or not item_id or len(item_id) > MAX_ID_CHARS:
            raise ProtocolError(f"item id {item_id!r} is not a short non-empty string")
        descriptors = raw.get("a", [])
        if not isinstance(descriptors, list):
            raise ProtocolError("array descriptors are not a list")
        arrays: dict[str, Any] = {}
        for descriptor in descriptors:
            if next_buffer >= len(buffers):
                raise ProtocolError("header describes more arrays than there are frames")
            name, array = _array(descriptor, buffers[next_buffer])
            if name in arrays:
                raise ProtocolError(f"duplicate array name {name!r} in item {item_id!r}")
            arrays[name] = array
            next_buffer += 1
        items.append(Item(id=item_id, fields=_map(raw.get("f", {}), "item fields"),
                          arrays=arrays))
    if next_buffer != len(buffers):
        raise ProtocolError(f"{len(buffers) - next_buffer} array frames are not described")
    return Message(kind=kind, fields=fields, items=tuple(items))


def _array(descriptor: Any, frame: Any) -> tuple[str, Any]:
    if not (isinstance(descriptor, list) and len(descriptor) == 3):
        raise ProtocolError("array descriptor must be [name, dtype, shape]")
    name, dtype, shape = descriptor
    if not isinstance(name, str) or not name:
        raise ProtocolError("array name must be a non-empty string")
    if dtype == JSON_DTYPE:
        data = bytes(_buffer(frame))
        if shape != [len(data)]:
            raise ProtocolError(f"array {name!r}: json frame of {len(data)} bytes, shape "
                                f"{shape!r}")
        return name, data
    dt = _DTYPES.get(dtype) if isinstance(dtype, str) else None
    if dt is None:
        raise ProtocolError(f"array {name!r}: dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise ProtocolError(f"array {name!r}: bad shape {shape!r}")
    for d in shape:
        if type(d) is not int or d < 0:  # `type`: a bool is an int, and not a dimension
            raise ProtocolError(f"array {name!r}: bad shape {shape!r}")
    buffer = _buffer(frame)
    expected = math.prod(shape) * dt.itemsize  # exact ints; numpy's prod is slow on tuples
    if expected != len(buffer):
        raise ProtocolError(f"array {name!r}: shape {shape} of {dtype} needs {expected} bytes, "
                            f"frame has {len(buffer)}")
    return name, np.frombuffer(buffer, dtype=dt).reshape(shape)


def answer_json(value: Any) -> bytes:
    """An answer as compact ASCII JSON; ValueError for NaN or Infinity (not JSON)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False).encode()


def _buffer(frame: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes and memoryviews are buffers already.
    view = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a map")
    return value
