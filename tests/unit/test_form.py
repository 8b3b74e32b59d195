"""Predict bodies read straight from the WSGI environ (frontend/form.py)."""
from __future__ import annotations

import io

import pytest

from mxserve.common.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from mxserve.frontend.decode import Field
from mxserve.frontend.form import FormLimits, read_fields

BOUNDARY = "b0undary"
LIMITS = FormLimits(max_body_bytes=10_000, max_parts=4)


def environ(body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
            chunked: bool = False) -> dict:
    env = {"CONTENT_TYPE": content_type, "wsgi.input": io.BytesIO(body)}
    if chunked:
        env["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def test_file_and_text_parts_in_order():
    image = b"\xff\xd8\xffjpeg\r\n--not-a-boundary"
    body = part("data", image, "x.jpg") + part("t", b"[1, 2]") + END
    assert read_fields(environ(body), LIMITS, ["data"]) == [
        Field("data", image, True), Field("t", "[1, 2]", False)]


def test_urlencoded_fields_are_text():
    body = b"data=%5B1%2C+2%5D&empty="
    fields = read_fields(environ(body, "application/x-www-form-urlencoded"), LIMITS, ["data"])
    assert fields == [Field("data", "[1, 2]", False), Field("empty", "", False)]


def test_a_chunked_body_is_read_to_its_end():
    body = part("data", b"[1]") + END
    assert read_fields(environ(body, chunked=True), LIMITS, ["data"]) == [
        Field("data", "[1]", False)]


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_other_media_types_are_415_naming_the_fields(content_type):
    with pytest.raises(UnsupportedMediaType, match=r"\['data'\]"):
        read_fields(environ(b"{}", content_type), LIMITS, ["data"])


def test_a_declared_length_over_the_limit_is_413_before_reading():
    env = environ(b"")
    env["CONTENT_LENGTH"] = str(LIMITS.max_body_bytes + 1)
    env["wsgi.input"] = None  # reading would fail: nothing may be read
    with pytest.raises(PayloadTooLarge, match="10001 bytes"):
        read_fields(env, LIMITS, ["data"])


def test_a_chunked_body_over_the_limit_is_413():
    body = part("data", b"x" * LIMITS.max_body_bytes) + END
    with pytest.raises(PayloadTooLarge):
        read_fields(environ(body, chunked=True), LIMITS, ["data"])


def test_too_many_parts_is_413():
    body = b"".join(part(f"f{i}", b"1") for i in range(LIMITS.max_parts + 1)) + END
    with pytest.raises(PayloadTooLarge, match="at most 4 parts"):
        read_fields(environ(body), LIMITS, ["data"])
    urlencoded = "&".join(f"f{i}=1" for i in range(LIMITS.max_parts + 1)).encode()
    with pytest.raises(PayloadTooLarge, match="more than 4 fields"):
        read_fields(environ(urlencoded, "application/x-www-form-urlencoded"), LIMITS, ["data"])


def test_malformed_multipart_is_400():
    with pytest.raises(InvalidInput, match="without a boundary"):
        read_fields(environ(END, "multipart/form-data"), LIMITS, ["data"])
    with pytest.raises(InvalidInput, match="no multipart part"):
        read_fields(environ(part("data", b"1").replace(BOUNDARY.encode(), b"other")), LIMITS,
                    ["data"])
    with pytest.raises(InvalidInput, match="malformed multipart"):
        read_fields(environ(part("data", b"1")), LIMITS, ["data"])  # no closing delimiter
    with pytest.raises(InvalidInput, match="Content-Length"):
        env = environ(END)
        env["CONTENT_LENGTH"] = "12x"
        read_fields(env, LIMITS, ["data"])


def test_text_that_is_not_utf8_is_400_naming_the_field():
    with pytest.raises(InvalidInput, match="'t' is not valid UTF-8"):
        read_fields(environ(part("t", b"\xff") + END), LIMITS, ["data"])
    with pytest.raises(InvalidInput, match="'t' is not valid UTF-8"):
        read_fields(environ(b"t=%FF", "application/x-www-form-urlencoded"), LIMITS, ["data"])


def test_no_body_is_no_fields():
    env = {"CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": io.BytesIO()}
    assert read_fields(env, LIMITS, ["data"]) == []
