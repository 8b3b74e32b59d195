"""Open Inference Protocol tensors and REST request bodies: every form in, every refusal a
clear InvalidInput (or PayloadTooLarge), never another exception."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mxserve.common.errors import InvalidInput, PayloadTooLarge
from mxserve.frontend.v2_inference import InferenceAnswer, RequestedOutput
from mxserve.frontend.v2_rest import parse_request, render_answer
from mxserve.frontend.v2_tensors import (
    Tensor,
    checked_shape,
    from_json,
    from_raw,
    joined_bytes,
    json_data_of,
    raw_of,
    split_bytes,
)


def test_flat_and_nested_json_give_the_same_tensor():
    flat = from_json("x", "FP32", (2, 2), [1, 2, 3, 4.5])
    nested = from_json("x", "FP32", (2, 2), [[1, 2], [3, 4.5]])
    assert flat.array.dtype == np.float32 and flat.array.shape == (2, 2)
    np.testing.assert_array_equal(flat.array, nested.array)


@pytest.mark.parametrize("datatype, data, words", [
    ("FP32", [1, 2, 3], "3 elements"),
    ("FP32", [1, "a", 3, 4], "numbers"),
    ("INT32", [1, 2.5, 3, 4], "integers"),
    ("UINT8", [1, 2, 3, 256], "does not fit"),
    ("BOOL", [1, 0, 1, 0], "true or false"),
    ("FP32", [1e39, 0, 0, 0], "too large"),
    ("FP99", [1, 2, 3, 4], "unknown datatype"),
    ("FP32", "1,2,3,4", "JSON list"),
    ("BYTES", [1, 2, 3, 4], "strings"),
])
def test_bad_json_data_is_refused_by_name(datatype, data, words):
    with pytest.raises(InvalidInput, match=words):
        from_json("x", datatype, (2, 2), data)


def test_raw_data_is_little_endian_row_major_and_checked_for_size():
    array = np.arange(6, dtype="<f4").reshape(2, 3)
    tensor = from_raw("x", "FP32", (2, 3), array.tobytes())
    np.testing.assert_array_equal(tensor.array, array)
    assert raw_of(tensor) == array.tobytes()
    with pytest.raises(InvalidInput, match="takes 24"):
        from_raw("x", "FP32", (2, 3), array.tobytes()[:-1])
    with pytest.raises(InvalidInput, match="NaN"):
        from_raw("x", "FP32", (1,), np.array([np.nan], "<f4").tobytes())


def test_bytes_elements_round_trip_and_truncation_is_refused():
    elements = [b"\xff\xd8jpeg", b"", b"abc"]
    wire = joined_bytes(elements)
    assert split_bytes("x", wire) == elements
    tensor = from_raw("x", "BYTES", (3,), wire)
    assert tensor.elements == tuple(elements) and raw_of(tensor) == wire
    with pytest.raises(InvalidInput, match="runs past"):
        split_bytes("x", wire[:-1])
    with pytest.raises(InvalidInput, match="inside a length prefix"):
        split_bytes("x", struct.pack("<I", 1) + b"a" + b"\x01\x00")
    with pytest.raises(InvalidInput, match="3 BYTES elements"):
        from_raw("x", "BYTES", (2,), wire)


@pytest.mark.parametrize("shape", [[-1, 2], "2", [2.0], [True], list(range(1, 10))])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(InvalidInput, match="shape"):
        checked_shape("x", shape, 1000)


def test_a_shape_over_the_element_limit_is_413():
    with pytest.raises(PayloadTooLarge):
        checked_shape("x", [1000, 1000], 10_000)


def request_body(inputs, outputs=None, **extra) -> bytes:
    body = {"inputs": inputs, **extra}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


def test_a_binary_request_takes_its_tensors_after_the_json_in_input_order():
    a = np.arange(4, dtype="<f4")
    b = np.arange(3, dtype="<i8")
    header = request_body(
        [{"name": "a", "datatype": "FP32", "shape": [4],
          "parameters": {"binary_data_size": a.nbytes}},
         {"name": "b", "datatype": "INT64", "shape": [3],
          "parameters": {"binary_data_size": b.nbytes}}],
        [{"name": "out", "parameters": {"binary_data": True, "classification": 2}}],
        id="req-1", parameters={"binary_data_output": True})
    request = parse_request("m", header + a.tobytes() + b.tobytes(), str(len(header)), 1000)
    assert [t.name for t in request.inputs] == ["a", "b"]
    np.testing.assert_array_equal(request.inputs[1].array, b)
    assert request.outputs == (RequestedOutput("out", True, 2),)
    assert request.id == "req-1" and request.binary_outputs


@pytest.mark.parametrize("body, header, words", [
    (b"{", None, "not valid JSON"),
    (b"[1]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}', None,
     "neither data nor binary_data_size"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', None,
     "not valid JSON"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}', "999",
     "the body has"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}', "x",
     "not a number"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": '
     b'{"binary_data_size": 8}}]}', "HEADER", "runs past"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], '
     b'"outputs": [{"name": "o", "parameters": {"classification": -1}}]}', None,
     "classification"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5}',
     None, "id must be a string"),
])
def test_malformed_requests_are_invalid_input(body, header, words):
    if header == "HEADER":
        header = str(len(body))
        body += b"\0\0\0\0"
    with pytest.raises(InvalidInput, match=words):
        parse_request("m", body, header, 1000)


def test_bytes_past_the_last_input_are_refused():
    header = request_body([{"name": "a", "datatype": "FP32", "shape": [1],
                            "parameters": {"binary_data_size": 4}}])
    with pytest.raises(InvalidInput, match="belong to no input"):
        parse_request("m", header + b"\0" * 8, str(len(header)), 1000)


def test_a_json_body_with_too_many_values_is_413_before_parsing():
    body = request_body([{"name": "a", "datatype": "FP32", "shape": [3000],
                          "data": [0] * 3000}])
    with pytest.raises(PayloadTooLarge):
        parse_request("m", body, None, 1000)


def test_answers_are_json_or_binary_as_each_output_asks():
    scores = Tensor("scores", "FP32", (1, 3), array=np.array([[0.1, 0.7, 0.2]], np.float32))
    top = Tensor("top", "BYTES", (1, 1), elements=(b"0.700000:1:cat",))
    answer = InferenceAnswer([scores, top])
    request = parse_request("m", request_body(
        [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
        [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "top"}]), None, 100)
    headers: list[tuple[str, str]] = []
    body = render_answer(request, answer, headers)
    length = int(dict(headers)["Inference-Header-Content-Length"])
    document = json.loads(body[:length])
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert np.frombuffer(body[length:], "<f4").tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert document["outputs"][1]["data"] == ["0.700000:1:cat"]
    assert json_data_of(scores) == pytest.approx([0.1, 0.7, 0.2])
