"""One worker batch mixing /predict requests (the service's answer) with v2 requests (output
tensors, class strings, tensors already in the model's layout): one forward, and each
request gets what it would have got alone."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mxserve.common.archive import load_archive
from mxserve.common.errors import InvalidInput
from mxserve.common.protocol import ANSWER, Item, RequestItem, fields_of
from mxserve.common.signature import parse_signature
from mxserve.worker.batch import run_batch, to_wire
from mxserve.worker.services.loader import load_service
from mxserve.worker.tensor_answers import checked_outputs, classes


def assert_same_top5(got, want):
    """The same classes in the same order; probabilities as close as two batch sizes'
    executors compute them."""
    [got], [want] = got, want
    assert [c["class"] for c in got] == [c["class"] for c in want]
    assert [c["probability"] for c in got] == pytest.approx(
        [c["probability"] for c in want], abs=1e-5)


def item(i: int, array: np.ndarray, outputs=None, preprocessed=False) -> Item:
    return Item(f"r{i}", fields_of(RequestItem(1e6, False, outputs, preprocessed)),
                {"data": array})


@pytest.fixture(scope="module")
def digits(sample_models, tmp_path_factory):
    archive = load_archive(sample_models["digits"], tmp_path_factory.mktemp("digits"))
    service = load_service(archive, max_batch_size=8)
    return service, parse_signature(service.signature)


def test_a_mixed_batch_answers_each_request_as_it_asked(digits):
    service, signature = digits
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    layout = np.stack(images[2:]).transpose(0, 3, 1, 2).astype(np.float32)
    items = [item(0, images[0]),  # /predict: the service's top-5 JSON
             item(1, images[1], outputs={}),  # v2: every output tensor
             item(2, layout, outputs={"softmax": 3}, preprocessed=True)]  # v2: classes, 2 rows
    outcomes = run_batch(service, signature, items, [math.inf] * 3)
    assert [o.error for o in outcomes] == [None] * 3

    assert_same_top5(outcomes[0].result, to_wire(service.handle_batch([[images[0]]])[0]))
    assert outcomes[1].to_item().arrays["softmax"].shape == (1, 10)  # tensors, not ANSWER
    assert ANSWER not in outcomes[1].to_item().arrays
    probabilities = outcomes[1].tensors["softmax"]
    expected = service._inference(service._preprocess_batch([[images[1]]])[0])[0].asnumpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    top = json.loads(outcomes[2].tensors["softmax"])
    assert len(top) == 2 and all(len(row) == 3 for row in top)
    rows = service._inference([layout])[0].asnumpy()
    for row, answer in zip(rows, top):
        best = int(np.argmax(row))
        assert answer[0] == f"{row[best]:f}:{best}:{service.labels[best]}"


def test_the_service_answer_is_unchanged_by_v2_neighbours(digits):
    service, signature = digits
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    [alone] = run_batch(service, signature, [item(0, image)], [math.inf])
    mixed = run_batch(service, signature, [item(1, image, outputs={}), item(0, image)],
                      [math.inf] * 2)
    assert_same_top5(mixed[1].result, alone.result)


def test_a_tensor_of_the_wrong_layout_fails_alone(digits):
    service, signature = digits
    good = np.zeros((1, 3, 32, 32), np.float32)
    bad = np.zeros((1, 3, 16, 16), np.float32)
    outcomes = run_batch(service, signature, [item(0, bad, {}, True), item(1, good, {}, True)],
                         [math.inf] * 2)
    assert isinstance(outcomes[0].error, InvalidInput) and "shape" in outcomes[0].error.message
    assert outcomes[1].error is None and outcomes[1].tensors["softmax"].shape == (1, 10)


def test_requested_outputs_are_checked():
    assert checked_outputs({}, ["a", "b"]) == {"a": 0, "b": 0}
    assert checked_outputs({"b": 2}, ["a", "b"]) == {"b": 2}
    for bad in ({"c": 0}, {"a": -1}, {"a": True}, ["a"]):
        with pytest.raises(InvalidInput):
            checked_outputs(bad, ["a", "b"])


def test_classes_are_score_index_label_best_first():
    rows = np.array([[0.1, 0.6, 0.3]], np.float32)
    assert json.loads(classes(rows, 2, ["x", "y", "z"])) == [["0.600000:1:y", "0.300000:2:z"]]
    assert json.loads(classes(rows, 5, None)) == [["0.600000:1", "0.300000:2", "0.100000:0"]]
