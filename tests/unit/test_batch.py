"""The batch runner's rules, with a plain-Python service (no model needed for this logic)."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from mxserve.common.errors import ModelError
from mxserve.common.protocol import Item
from mxserve.common.signature import parse_signature
from mxserve.worker.batch import run_batch, to_wire

SIGNATURE = parse_signature({
    "inputs": [{"data_name": "x", "data_shape": [0, 2]}], "input_type": "application/json",
    "outputs": [{"data_name": "y", "data_shape": [0, 2]}], "output_type": "application/json"})


class Doubler:
    """Answers 2x per request; raises for any request containing a negative number."""

    def __init__(self):
        self.batches: list[int] = []

    def handle_batch(self, requests):
        self.batches.append(len(requests))
        for (x,) in requests:
            if (x < 0).any():
                raise ValueError("negative input\nsecond line with /secret/path")
        return [(x * 2).tolist() for (x,) in requests]


def items(*arrays):
    return [Item(f"r{i}", {}, {"x": np.asarray(a, np.float32)}) for i, a in enumerate(arrays)]


FAR = time.monotonic() + 3600


def test_one_forward_for_the_whole_batch():
    service = Doubler()
    outcomes = run_batch(service, SIGNATURE, items([[1, 2]], [[3, 4]], [[5, 6], [7, 8]]), [FAR] * 3)
    assert service.batches == [3]
    assert [o.result for o in outcomes] == [[[2, 4]], [[6, 8]], [[10, 12], [14, 16]]]


def test_a_failing_request_fails_alone_without_traceback():
    service = Doubler()
    outcomes = run_batch(service, SIGNATURE, items([[1, 2]], [[-1, 0]], [[3, 4]]), [FAR] * 3)
    assert outcomes[0].result == [[2, 4]] and outcomes[2].result == [[6, 8]]
    error = outcomes[1].error
    assert isinstance(error, ModelError)
    assert error.message == "the model raised ValueError: negative input"
    assert service.batches == [3, 1, 1, 1]


def test_expired_requests_are_not_executed():
    service = Doubler()
    past = time.monotonic() - 1
    outcomes = run_batch(service, SIGNATURE, items([[1, 2]], [[3, 4]]), [past, FAR])
    assert outcomes[0].error.type == "DeadlineExceeded"
    assert outcomes[1].result == [[6, 8]]
    assert service.batches == [1]


@pytest.mark.parametrize("bad, match", [
    ({"x": np.zeros((1, 3), np.float32)}, r"shape \[0, 2\]"),
    ({"x": np.zeros((0, 2), np.float32)}, r"shape \[0, 2\]"),
    ({"y": np.zeros((1, 2), np.float32)}, r"expected inputs \['x'\]"),
    ({}, r"expected inputs \['x'\]"),
])
def test_inputs_not_matching_the_signature_never_reach_the_model(bad, match):
    service = Doubler()
    outcomes = run_batch(service, SIGNATURE, [Item("bad", {}, bad)] + items([[1, 1]]), [FAR] * 2)
    assert outcomes[0].error.type == "InvalidInput"
    assert re.search(match, outcomes[0].error.message)
    assert outcomes[1].result == [[2, 2]] and service.batches == [1]


def test_wrong_number_of_answers_is_a_model_error():
    class Short:
        def handle_batch(self, requests):
            return []

    outcomes = run_batch(Short(), SIGNATURE, items([[1, 2]], [[3, 4]]), [FAR] * 2)
    assert all(o.error and o.error.type == "ModelError" for o in outcomes)


def test_answers_are_made_wire_safe():
    assert to_wire({"a": np.float32(0.5), "b": (np.int64(3), np.arange(2))}) == \
        {"a": 0.5, "b": [3, [0, 1]]}
    with pytest.raises(ModelError, match="cannot be sent"):
        to_wire({"a": object()})


IMAGE_SIGNATURE = parse_signature({
    "inputs": [{"data_name": "data", "data_shape": [1, 3, 32, 32]}],
    "input_type": "image/jpeg",
    "outputs": [{"data_name": "y", "data_shape": [1, 2]}], "output_type": "application/json"})


class Recorder:
    """Answers each request's mean pixel and keeps what it was given."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def handle_batch(self, requests):
        self.seen += [image for (image,) in requests]
        return [float(image.mean()) for (image,) in requests]


def test_images_sent_encoded_are_decoded_as_the_frontend_would_and_bad_ones_fail_alone():
    import io

    from PIL import Image

    from mxserve.common import images
    from mxserve.worker.batch import BatchTiming, ImageLimits

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(out, format="JPEG")
    good = out.getvalue()
    encoded = {"encoded_images": True}
    batch = [Item("good", encoded, {"data": np.frombuffer(good, np.uint8)}),
             Item("cut", encoded, {"data": np.frombuffer(good[:300], np.uint8)})]
    service, timing = Recorder(), BatchTiming()
    outcomes = run_batch(service, IMAGE_SIGNATURE, batch, [FAR] * 2, timing)
    small = run_batch(service, IMAGE_SIGNATURE, [Item("small", encoded, {
        "data": np.frombuffer(good, np.uint8)})], [FAR], image_limits=ImageLimits(100, False))

    expected = images.decode_image(good, IMAGE_SIGNATURE.inputs[0], 16_000_000)
    assert len(service.seen) == 1 and np.array_equal(service.seen[0], expected)
    assert outcomes[0].error is None and outcomes[0].result == float(expected.mean())
    assert outcomes[1].error.type == "InvalidInput" and "decoded" in outcomes[1].error.message
    assert small[0].error.type == "PayloadTooLarge" and "64x48" in small[0].error.message
    assert timing.decode_ms > 0


def test_decoded_images_still_have_to_be_images():
    outcomes = run_batch(Recorder(), IMAGE_SIGNATURE, [
        Item("floats", {"encoded_images": True}, {"data": np.zeros(8, np.float32)})],
        [FAR])
    assert outcomes[0].error.type == "InvalidInput"
    assert "1-D uint8" in outcomes[0].error.message
