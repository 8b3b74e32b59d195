"""Frontend input decoding: images as MMS 0.4 preprocessed them, tensors checked strictly."""
from __future__ import annotations

import base64
import io
import json
import os

import cv2
import numpy as np
import pytest
import sklearn
from PIL import Image

from mxserve.common.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from mxserve.common.signature import parse_signature
from mxserve.frontend.decode import Field, Limits, decode_inputs

PHOTOS = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
IMAGE_SIG = parse_signature({"inputs": [{"data_name": "data", "data_shape": [1, 3, 224, 224]}],
                             "input_type": "image/jpeg",
                             "outputs": [{"data_name": "o", "data_shape": [1, 10]}]})
GRAY_SIG = parse_signature({"inputs": [{"data_name": "data", "data_shape": [1, 1, 28, 28]}],
                            "input_type": "image/jpeg",
                            "outputs": [{"data_name": "o", "data_shape": [1, 10]}]})
TENSOR_SIG = parse_signature({"inputs": [{"data_name": "x", "data_shape": [0, 4]}],
                              "input_type": "application/json",
                              "outputs": [{"data_name": "o", "data_shape": [0, 2]}]})
LIMITS = Limits()


def photo() -> bytes:
    with open(os.path.join(PHOTOS, "china.jpg"), "rb") as f:
        return f.read()


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_field(data, is_file=True):
    return [Field("data", data, is_file)]


def test_jpeg_matches_mms04_preprocessing_pixel_for_pixel():
    data = photo()
    got = decode_inputs(IMAGE_SIG, image_field(data), LIMITS)["data"]
    # MMS 0.4: mx.image.imdecode (OpenCV, RGB) then imresize(..., interp=2) = INTER_CUBIC.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(bgr[:, :, ::-1], (224, 224), interpolation=cv2.INTER_CUBIC)
    assert got.dtype == np.uint8 and got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, expected)


def test_base64_form_field_is_accepted_as_in_mms04():
    data = photo()
    from_file = decode_inputs(IMAGE_SIG, image_field(data), LIMITS)["data"]
    from_text = decode_inputs(IMAGE_SIG, image_field(base64.b64encode(data).decode(), False),
                              LIMITS)["data"]
    np.testing.assert_array_equal(from_file, from_text)


def test_png_and_grayscale():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    got = decode_inputs(IMAGE_SIG, image_field(encode(rgb, "PNG")), LIMITS)["data"]
    assert got.shape == (224, 224, 3)
    gray = decode_inputs(GRAY_SIG, image_field(encode(rgb, "PNG")), LIMITS)["data"]
    assert gray.shape == (28, 28, 1)


@pytest.mark.parametrize("data, error, match", [
    (photo()[:20000], InvalidInput, "could not be decoded"),
    (b"hello, I am text", UnsupportedMediaType, "not a JPEG or PNG"),
    (b"GIF89a" + b"\0" * 100, UnsupportedMediaType, "not a JPEG or PNG"),
    (b"", InvalidInput, "is empty"),
    (b"\xff\xd8\xff" + b"\0" * 50, InvalidInput, "could not be decoded"),
])
def test_bad_images(data, error, match):
    with pytest.raises(error, match=match):
        decode_inputs(IMAGE_SIG, image_field(data), LIMITS)


def test_oversize_image_is_refused_from_its_header():
    # A 20000 x 20000 PNG of one colour compresses to a few hundred KB; refused unread.
    big = encode(np.zeros((20000, 20000), np.uint8), "PNG", compress_level=9)
    with pytest.raises(PayloadTooLarge, match="20000x20000"):
        decode_inputs(IMAGE_SIG, image_field(big), LIMITS)


def test_invalid_base64_is_a_400():
    with pytest.raises(InvalidInput, match="neither a file nor valid base64"):
        decode_inputs(IMAGE_SIG, image_field("not base64 at all!", False), LIMITS)


@pytest.mark.parametrize("fields, match", [
    ([], "missing field 'data'"),
    ([Field("image", b"x", True)], r"unexpected field\(s\) \['image'\]"),
    ([Field("data", photo(), True), Field("data", photo(), True)], "sent 2 times"),
])
def test_field_names_are_checked(fields, match):
    with pytest.raises(InvalidInput, match=match):
        decode_inputs(IMAGE_SIG, fields, LIMITS)


def tensor(text):
    return decode_inputs(TENSOR_SIG, [Field("x", text, False)], LIMITS)["x"]


def test_json_tensor_with_and_without_batch_axis():
    assert tensor("[[1, 2, 3, 4], [5, 6, 7, 8]]").shape == (2, 4)
    single = tensor("[1, 2, 3, 4.5]")
    assert single.shape == (1, 4) and single.dtype == np.float32 and single[0, 3] == 4.5


@pytest.mark.parametrize("text, match", [
    ("[1, 2, 3]", r"shape \[3\]"),
    ("[[1, 2], [3, 4]]", r"shape \[2, 2\]"),
    ("[[1, 2, 3, 4], [1, 2]]", "rectangular"),
    ('[["a", 2, 3, 4]]', "rectangular"),
    ("[[NaN, 1, 2, 3]]", "not a finite number"),
    ("[[Infinity, 1, 2, 3]]", "not a finite number"),
    ("[[1e39, 1, 2, 3]]", "too large for float32"),
    ("[[1, 2, 3, 4]", "not valid JSON"),
    ("[" * 10000 + "]" * 10000, "nested too deeply"),
    ("[" * 40 + "1" + "]" * 40, "nested 40 deep"),
    ('{"a": 1}', "rectangular|shape"),
])
def test_bad_tensors(text, match):
    with pytest.raises(InvalidInput, match=match):
        tensor(text)


def test_deep_nesting_is_refused_fast():
    import time

    started = time.perf_counter()
    with pytest.raises(InvalidInput):
        tensor("[" * 100_000 + "]" * 100_000)
    assert time.perf_counter() - started < 1.0  # generous: the point is no quadratic blow-up


def test_json_payload_helper_roundtrip():
    assert tensor(json.dumps(np.arange(8).reshape(2, 4).tolist())).sum() == 28


def test_jpeg_draft_decodes_large_photos_at_reduced_scale_only():
    import time

    china = cv2.imdecode(np.frombuffer(photo(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    data = encode(cv2.resize(china, (3200, 2135), interpolation=cv2.INTER_CUBIC), "JPEG",
                  quality=90)
    full_limits, draft_limits = Limits(), Limits(jpeg_draft=True)
    assert not full_limits.jpeg_draft  # off by default: MMS 0.4's pixels

    def timed(limits):
        started = time.perf_counter()
        out = decode_inputs(IMAGE_SIG, image_field(data), limits)["data"]
        return out, time.perf_counter() - started

    full, full_s = timed(full_limits)
    fast, fast_s = timed(draft_limits)
    assert fast.shape == full.shape == (224, 224, 3)
    # The same picture, not the same pixels: why draft decoding is opt-in.
    difference = np.abs(fast.astype(int) - full.astype(int)).mean()
    assert 0 < difference < 8, difference
    assert fast_s < full_s
    # Photos under twice the input size decode in full: pixel-identical to 0.4.
    np.testing.assert_array_equal(
        decode_inputs(IMAGE_SIG, image_field(photo()), draft_limits)["data"],
        decode_inputs(IMAGE_SIG, image_field(photo()), full_limits)["data"])


def test_binary_data_for_a_json_tensor_is_a_400_not_a_500():
    """Found by the fuzz test: a JPEG file sent to a JSON-tensor model raised
    UnicodeDecodeError (a 500)."""
    from mxserve.common.signature import TensorSpec
    from mxserve.frontend.decode import Limits, decode_tensor

    with pytest.raises(InvalidInput, match="JSON text"):
        decode_tensor(b"\xff\xd8\xff\xe0 not utf-8", TensorSpec("data", (1, 64)), Limits())


def test_images_left_for_the_worker_are_checked_but_not_decoded():
    data = photo()
    arrays = decode_inputs(IMAGE_SIG, image_field(data), LIMITS, decode_images=False)
    encoded = arrays["data"]
    assert encoded.dtype == np.uint8 and encoded.ndim == 1
    assert encoded.tobytes() == data
    assert not encoded.flags.owndata  # a view of the form's bytes, not a copy


@pytest.mark.parametrize("data, error, match", [
    (b"hello, I am text", UnsupportedMediaType, "not a JPEG or PNG"),
    (b"\xff\xd8\xff" + b"\0" * 50, InvalidInput, "could not be decoded"),
    (encode(np.zeros((20000, 20000), np.uint8), "PNG", compress_level=9), PayloadTooLarge,
     "20000x20000"),
])
def test_images_left_for_the_worker_are_refused_here_when_their_header_says_so(data, error,
                                                                              match):
    with pytest.raises(error, match=match):
        decode_inputs(IMAGE_SIG, image_field(data), LIMITS, decode_images=False)


def test_json_values_are_counted_before_the_parse():
    """A 6.5 MB body of empty lists once cost a frontend ~235 MB; it is refused from a
    count of its brackets and commas, before any list exists."""
    hostile = "[" + ",".join(["[]"] * 2_200_000) + "]"
    with pytest.raises(PayloadTooLarge, match="max_json_elements"):
        decode_inputs(TENSOR_SIG, [Field("x", hostile, False)], LIMITS)
    small = Limits(max_tensor_elements=10)
    with pytest.raises(PayloadTooLarge):
        decode_inputs(TENSOR_SIG, [Field("x", json.dumps([[1, 2, 3, 4]] * 3), False)], small)
    decoded = decode_inputs(TENSOR_SIG, [Field("x", "[[1, 2, 3, 4]]", False)], small)
    assert decoded["x"].shape == (1, 4)
