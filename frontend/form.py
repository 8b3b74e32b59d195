"""A predict request's form fields, read straight from the WSGI environ.

The predict path is the one request that must be cheap, and the `multipart` package's push
parser (Bottle's) is several times faster than werkzeug's on the same bodies
(docs/benchmarks.md), so predict bodies are parsed with it. Both form encodings 0.4 clients
use are accepted: multipart/form-data (files or text fields) and
application/x-www-form-urlencoded (text fields: JSON tensors, base64 images).

Limits, each a 4xx naming what was too big: the body (413 before reading a byte when its
Content-Length says so; a chunked body is cut off at the limit), the number of parts and
the size and count of each part's headers (413).
"""
from __future__ import annotations

import itertools
import urllib.parse
from dataclasses import dataclass
from typing import Any

import multipart

from mxserve.common.config import Config
from mxserve.common.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from mxserve.frontend.decode import Field

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
FORM_TYPES = (MULTIPART, URLENCODED)
PART_HEADER_BYTES = 4096  # one header line of one part (a Content-Disposition is ~100)
PART_HEADER_COUNT = 8  # RFC 7578 allows 3


@dataclass(frozen=True)
class FormLimits:
    max_body_bytes: int
    max_parts: int

    @classmethod
    def of(cls, config: Config) -> FormLimits:
        return cls(config.max_body_bytes, config.max_form_parts)


def media_type(environ: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The request's Content-Type, lower-cased, and its parameters."""
    mimetype, options = multipart.parse_options_header(environ.get("CONTENT_TYPE", ""))
    return mimetype.lower(), options


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError as exc:
            raise InvalidInput(f"Content-Length {length!r} is not a number") from exc
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {max_bytes}")
        return stream.read(size) if size > 0 else b""
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
        return b""
    body = stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the request body is over the limit of {max_bytes} bytes")
    return body


def read_fields(environ: dict[str, Any], limits: FormLimits,
                expected: list[str]) -> list[Field]:
    """Every field of the form, in order; `expected` only words the 415's message."""
    mimetype, options = media_type(environ)
    if mimetype not in FORM_TYPES:
        raise UnsupportedMediaType(f"send multipart/form-data with field(s) {expected}, not "
                                   f"{mimetype or 'no body'}")
    body = read_body(environ, limits.max_body_bytes)
    if mimetype == URLENCODED:
        return _urlencoded_fields(body, limits.max_parts)
    boundary = options.get("boundary", "")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary parameter in Content-Type")
    return _multipart_fields(body, boundary, limits.max_parts)


def _urlencoded_fields(body: bytes, max_parts: int) -> list[Field]:
    try:
        pairs = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True,
                                       strict_parsing=False, max_num_fields=max_parts,
                                       encoding="utf-8", errors="surrogateescape")
    except ValueError as exc:  # more fields than max_parts
        raise PayloadTooLarge(f"the form has more than {max_parts} fields") from exc
    return [Field(name, _text(name, value.encode("utf-8", "surrogateescape")), False)
            for name, value in pairs]


def _multipart_fields(body: bytes, boundary: str, max_parts: int) -> list[Field]:
    return [Field(segment.name, _text(segment.name, data), False) if segment.filename is None
            else Field(segment.name, data, True)
            for segment, data in _multipart_parts(body, boundary, max_parts)]


def _multipart_parts(body: bytes, boundary: str, max_parts: int
                     ) -> list[tuple[multipart.MultipartSegment, bytes]]:
    parts: list[tuple[multipart.MultipartSegment, bytes]] = []
    chunks: list[bytes] = []
    segment: multipart.MultipartSegment | None = None
    try:
        parser = multipart.PushMultipartParser(
            boundary, content_length=len(body), max_header_size=PART_HEADER_BYTES,
            max_header_count=PART_HEADER_COUNT, max_segment_count=max_parts)
        for event in itertools.chain(parser.parse(body), parser.parse(b"")):
            if isinstance(event, multipart.MultipartSegment):
                segment, chunks = event, []
            elif event is not None:
                chunks.append(event)
            elif segment is not None:  # the part is complete
                parts.append((segment, b"".join(chunks)))
    except multipart.ParserLimitReached as exc:
        raise PayloadTooLarge(f"multipart body over a limit (at most {max_parts} parts, "
                              f"{PART_HEADER_COUNT} headers of {PART_HEADER_BYTES} bytes "
                              f"each): {exc}") from exc
    except multipart.MultipartError as exc:
        if not parts and segment is None:
            raise InvalidInput(f"the body holds no multipart part delimited by the boundary "
                               f"{boundary!r} given in Content-Type") from exc
        raise InvalidInput(f"malformed multipart/form-data body: {exc}") from exc
    return parts


@dataclass(frozen=True)
class Part:
    """One value of a request for an MMS 1.x handler: its name, bytes and media type."""

    name: str
    data: bytes
    content_type: str


def read_parts(environ: dict[str, Any], limits: FormLimits) -> list[Part]:
    """A request as MMS 1.x hands it to a handler: a form's fields by their names (a text
    field has no media type), or any other body whole, as "body", with its media type
    (Content-Type without its parameters, as MMS 1.1 gives it)."""
    mimetype, options = media_type(environ)
    body = read_body(environ, limits.max_body_bytes)
    if mimetype == URLENCODED:
        return [Part(f.name, f.data.encode() if isinstance(f.data, str) else f.data, "")
                for f in _urlencoded_fields(body, limits.max_parts)]
    if mimetype == MULTIPART:
        boundary = options.get("boundary", "")
        if not boundary:
            raise InvalidInput("multipart/form-data without a boundary parameter in "
                               "Content-Type")
        return [Part(segment.name, data,
                     (segment.content_type or "") if segment.filename is not None else "")
                for segment, data in _multipart_parts(body, boundary, limits.max_parts)]
    return [Part("body", body, mimetype)]


def _text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"text field {name!r} is not valid UTF-8 (send binary data as "
                           "a file part)") from exc
