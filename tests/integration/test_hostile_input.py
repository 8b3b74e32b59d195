"""Hostile input over real sockets: every bad request is a JSON 4xx, and afterwards /ping is
200, a valid prediction works and no worker has restarted (docs/design.md)."""
from __future__ import annotations

import io
import json
import socket
import time

import pytest
import requests
from PIL import Image

from mxserve.common.proctree import pss_bytes
from tests.integration.test_server_http import assert_error, predict

BOUNDARY = "mxserveboundary"


@pytest.fixture(scope="module")
def workers_before(server):
    return server.processes("worker --archive")


@pytest.fixture(autouse=True)
def still_serving(server, reference, workers_before):
    """After each hostile request: healthy, answering, no worker restarted."""
    yield
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    ok = predict(server, "mms04_digits", files={"data": image})
    assert ok.status_code == 200 and ok.json()["prediction"][0][0]["class"] == "2"
    assert server.processes("worker --archive") == workers_before


def raw(server, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send bytes as they are; return (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_raw_error(answer, status, error_type, *words):
    code, headers, body = answer
    assert code == status, body[:500]
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["code"] == status and parsed["type"] == error_type, parsed
    for word in words:
        assert word in parsed["message"], parsed["message"]
    assert b"Traceback" not in body and b"<html" not in body
    return parsed


def post_raw(server, path: str, body: bytes, content_type: str | None = None,
             extra: str = "") -> bytes:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def part(name: str, data: bytes, filename: str | None = "x.jpg") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def end() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def jpeg(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=save.pop("format", "JPEG"), **save)
    return out.getvalue()


# -- malformed multipart -------------------------------------------------------------------

def test_a_body_with_another_boundary_is_a_400_naming_the_boundary(server, reference):
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    body = part("data", image).replace(BOUNDARY.encode(), b"other") + b"--other--\r\n"
    assert_raw_error(raw(server, post_raw(server, "/digits/predict", body)), 400,
                     "InvalidInput", "no multipart part", repr(BOUNDARY))


def test_an_unterminated_part_is_a_400(server, reference):
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    body = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; " \
           f"filename=\"x.jpg\"\r\n\r\n".encode() + image
    assert_raw_error(raw(server, post_raw(server, "/digits/predict", body)), 400,
                     "InvalidInput")


def test_10000_parts_are_refused(server):
    body = b"".join(part(f"f{i}", b"1", None) for i in range(10_000)) + end()
    started = time.monotonic()
    answer = raw(server, post_raw(server, "/digits/predict", body))
    assert_raw_error(answer, 413, "PayloadTooLarge")
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("content_type", ["application/json", "text/plain",
                                          "application/octet-stream"])
def test_non_multipart_bodies_are_415(server, content_type):
    answer = raw(server, post_raw(server, "/digits/predict", b'{"data": [1, 2]}', content_type))
    assert_raw_error(answer, 415, "UnsupportedMediaType", "multipart/form-data")


def test_missing_duplicate_and_empty_fields(server, reference):
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    assert_raw_error(raw(server, post_raw(server, "/digits/predict", end())), 400,
                     "InvalidInput", "missing field 'data'")
    twice = part("data", image) + part("data", image) + end()
    assert_raw_error(raw(server, post_raw(server, "/digits/predict", twice)), 400,
                     "InvalidInput", "sent 2 times")
    assert_error(predict(server, "digits", files={"data": b""}), 400, "InvalidInput",
                 "is empty")
    assert_error(predict(server, "digits", files={"data": image, "label": b"7"}), 400,
                 "InvalidInput", "unexpected field(s) ['label']")


# -- images ----------------------------------------------------------------------------------

def test_a_1x1_image_is_resized_and_answered(server):
    response = predict(server, "digits", files={"data": jpeg(Image.new("RGB", (1, 1), "white"))})
    assert response.status_code == 200 and len(response.json()["prediction"][0]) == 5


def test_a_20000x20000_image_is_413_from_its_header_with_memory_flat(server):
    small = jpeg(Image.new("RGB", (16, 16), "gray"))
    sof = small.index(b"\xff\xc0")  # baseline frame header: ..., height, width (big endian)
    huge = bytearray(small)
    huge[sof + 5:sof + 9] = (20_000).to_bytes(2, "big") + (20_000).to_bytes(2, "big")
    frontends = server.processes("gunicorn")
    before = sum(pss_bytes(pid) for pid in frontends)
    started = time.monotonic()
    for _ in range(5):
        response = predict(server, "resnet18", files={"data": bytes(huge)})
        assert_error(response, 413, "PayloadTooLarge", "20000x20000")
    elapsed = time.monotonic() - started
    grown_mib = (sum(pss_bytes(pid) for pid in frontends) - before) / 2**20
    print(f"5 x 20000x20000 headers refused in {elapsed * 1000:.0f} ms, frontends grew "
          f"{grown_mib:.1f} MiB")
    assert grown_mib < 50  # 1.2 GB of pixels were never allocated


@pytest.mark.parametrize("kind", ["png", "cmyk", "grayscale", "progressive", "rgba_png"])
def test_other_encodings_of_the_same_digit_get_its_answer(server, reference, kind):
    upright = Image.open(reference / "images" / "digit_3.jpg")
    data = {"png": lambda: jpeg(upright, format="PNG"),
            "cmyk": lambda: jpeg(upright.convert("CMYK"), quality=95),
            "grayscale": lambda: jpeg(upright.convert("L"), quality=95),
            "progressive": lambda: jpeg(upright, progressive=True, quality=95),
            "rgba_png": lambda: jpeg(upright.convert("RGBA"), format="PNG")}[kind]()
    response = predict(server, "mms04_digits", files={"data": data})
    assert response.status_code == 200, response.text
    assert response.json()["prediction"][0][0]["class"] == "3"


def test_exif_rotation_is_applied_as_mms04_did(server, reference):
    upright = Image.open(reference / "images" / "digit_4.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are turned 90 CCW
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    rotated = jpeg(stored, exif=exif.tobytes(), quality=95)
    response = predict(server, "mms04_digits", files={"data": rotated})
    assert response.status_code == 200
    assert response.json()["prediction"][0][0]["class"] == "4"


@pytest.mark.parametrize("kind", ["gif", "webp", "bmp"])
def test_formats_outside_the_contract_are_415(server, reference, kind):
    image = Image.open(reference / "images" / "digit_3.jpg")
    response = predict(server, "digits", files={"data": jpeg(image, format=kind.upper())})
    assert_error(response, 415, "UnsupportedMediaType", "JPEG or PNG")


# -- JSON tensors ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ('[["a", "b"]]', "rectangular list of numbers"),
    ("[[1, 2], [3]]", "rectangular list of numbers"),
    ('{"x": 1}', "rectangular list of numbers"),
    ("[" + ", ".join(["NaN"] * 64) + "]", "not a finite number"),
    ("[" + ", ".join(["Infinity"] * 64) + "]", "not a finite number"),
    ("[" + ", ".join(["1e999"] * 64) + "]", "too large for float32"),
    ("[[1, 2, 3]]", "[0, 64]"),
    ("[" * 10_000 + "]" * 10_000, "nested"),
    ("\udcff", "not valid"),
])
def test_bad_json_tensors_are_400_fast(server, text, words):
    started = time.monotonic()
    response = predict(server, "digits_mlp", data={"data": text.encode("utf-8", "surrogateescape")})
    elapsed = time.monotonic() - started
    assert_error(response, 400, "InvalidInput", words)
    assert elapsed < 0.5, f"{elapsed * 1000:.0f} ms"


def test_10000_deep_json_is_refused_in_under_100_ms(server):
    deep = "[" * 10_000 + "]" * 10_000
    predict(server, "digits_mlp", data={"data": deep})  # connection set up
    timings = []
    for _ in range(5):
        started = time.monotonic()
        response = predict(server, "digits_mlp", data={"data": deep})
        timings.append(time.monotonic() - started)
        assert_error(response, 400, "InvalidInput", "nested")
    assert sorted(timings)[2] < 0.1, timings


def test_an_oversized_tensor_is_413(server):
    big = json.dumps([[0.5] * 64] * 60_000)  # ~ 11 MB of JSON
    assert_error(predict(server, "digits_mlp", data={"data": big}), 413, "PayloadTooLarge")


# -- bodies, paths, request lines and headers ------------------------------------------------

def test_a_chunked_body_over_the_limit_is_a_json_413(server):
    chunk = b"\xff\xd8\xff" + b"\0" * (1 << 20)
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(8)) \
        + b"0\r\n\r\n"
    request = (f"POST /digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n").encode() + body
    assert_raw_error(raw(server, request), 413, "PayloadTooLarge")


@pytest.mark.parametrize("path", ["/%C3%A9t%C3%A9/predict", "/../predict", "/%2e%2e/predict",
                                  "/..%2f..%2fetc%2fpasswd/predict", "/" + "m" * 300 + "/predict",
                                  "/digits%00/predict", "/digits/../digits/predict"])
def test_strange_model_names_are_404(server, reference, path):
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    answer = raw(server, post_raw(server, path, part("data", image) + end()))
    if path == "/digits/../digits/predict":  # a client may normalise the path: it is digits
        assert answer[0] in (200, 404)
        return
    # A name with a slash in it matches no route (NotFound); any other is a model name.
    kind = "NotFound" if "%2f" in path or path.count("/") > 2 else "ModelNotFound"
    parsed = assert_raw_error(answer, 404, kind)
    assert len(parsed["message"]) < 300  # a long name is not echoed whole


def test_request_line_and_headers_over_gunicorns_limits_are_json(server):
    long_line = f"GET /ping?{'q' * 5000} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert_raw_error(raw(server, long_line.encode()), 414, "URITooLong")
    many = "".join(f"X-H{i}: v\r\n" for i in range(150))
    request = f"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many}\r\n"
    assert_raw_error(raw(server, request.encode()), 431, "HeaderFieldsTooLarge")
    huge = f"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {'v' * 9000}\r\n\r\n"
    assert_raw_error(raw(server, huge.encode()), 431, "HeaderFieldsTooLarge")
    garbage = raw(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
    assert_raw_error(garbage, 400, "InvalidInput")
