"""Property-based fuzzing of the running server: generated requests (paths, methods, content
types, multipart fields, images, JSON tensors, raw bytes) against the real stack. Every
answer must be a 2xx, or a JSON error from our table that is not a 500: a 500 would mean
our code failed on input it should have refused (docs/design.md)."""
from __future__ import annotations

import io
import json
import os

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

MODELS = ["digits", "resnet18", "digits_mlp", "mms04_digits"]
# 80 per test in CI (~20 s); MXSERVE_FUZZ_EXAMPLES=2000 for a deeper run.
EXAMPLES = int(os.environ.get("MXSERVE_FUZZ_EXAMPLES", "80"))
ALLOWED = {200, 400, 404, 405, 413, 414, 415, 431, 503}


WRITABLE = [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("L", "PNG"),
            ("RGBA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("RGB", "BMP"), ("RGB", "WEBP")]


def _image(size: tuple[int, int], mode_format: tuple[str, str], cut: float | None) -> bytes:
    """An encoded image, whole or cut short at a fraction of its length."""
    mode, fmt = mode_format
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, format=fmt)
    data = out.getvalue()
    return data[:max(1, int(len(data) * cut))] if cut is not None else data


images = st.builds(_image, st.tuples(st.integers(1, 300), st.integers(1, 300)),
                   st.sampled_from(WRITABLE), st.none() | st.floats(0.01, 0.99))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=3),
                                                                      children, max_size=3),
    max_leaves=80)
tensors = st.one_of(
    json_values.map(json.dumps),
    st.lists(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=70), max_size=4).map(json.dumps),
    st.text(max_size=200),
)
field_values = st.one_of(images, tensors.map(str.encode), st.binary(max_size=2000))
field_names = st.sampled_from(["data", "image", "", "data[]", "ÿ", "a" * 300])
paths = st.one_of(
    st.sampled_from(MODELS).map(lambda m: f"/{m}/predict"),
    st.text(min_size=1, max_size=40).map(lambda t: "/" + requests.utils.quote(t, safe="/%")),
    st.sampled_from(["/", "/ping", "/api-description", "/predict", "//predict"]))


def _check(response: requests.Response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.headers.get("Content-Type") == "application/json", response.text[:300]
        body = response.json()
        assert body["code"] == response.status_code and body["type"] and body["message"]
        assert "Traceback" not in response.text


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=paths,
       fields=st.lists(st.tuples(field_names, field_values, st.booleans()), max_size=3))
def test_generated_multipart_requests_never_get_a_500(server, path, fields):
    files = [(name, ("f", value)) if as_file else (name, (None, value))
             for name, value, as_file in fields]
    response = requests.post(server.url + path, files=files or None, data=None if files else
                             {}, timeout=60)
    _check(response)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       path=paths, content_type=st.sampled_from([
           None, "multipart/form-data", "multipart/form-data; boundary=", "application/json",
           "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
           "text/plain; charset=utf-9"]),
       body=st.binary(max_size=3000) | tensors.map(str.encode))
def test_generated_raw_requests_never_get_a_500(server, method, path, content_type, body):
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.request(method, server.url + path, data=body, headers=headers,
                                timeout=60)
    if method != "HEAD":  # HEAD answers carry no body to check
        _check(response)
    else:
        assert response.status_code in ALLOWED


def test_the_server_is_still_healthy_after_fuzzing(server):
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
