"""Predictor: every batch size answers what a fresh bind of that size answers,
whatever array type and dtype a service hands it."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from mxserve.worker.predictor import Predictor, copy_rows


@pytest.fixture
def dense_model(tmp_path):
    data = mx.sym.var("data")
    symbol = mx.sym.FullyConnected(mx.sym.relu(data), num_hidden=5, name="fc")
    rng = np.random.default_rng(1)
    params = {"arg:fc_weight": mx.nd.array(rng.normal(size=(5, 12))),
              "arg:fc_bias": mx.nd.array(rng.normal(size=5))}
    symbol.save(str(tmp_path / "m-symbol.json"))
    mx.nd.save(str(tmp_path / "m-0000.params"), params)
    weight, bias = params["arg:fc_weight"].asnumpy(), params["arg:fc_bias"].asnumpy()
    return tmp_path, lambda x: np.maximum(x, 0) @ weight.T + bias


@pytest.mark.parametrize("kind", ["float32", "float64", "uint8", "ndarray"])
def test_every_batch_size_answers_like_numpy(dense_model, kind):
    folder, expected = dense_model
    predictor = Predictor(folder / "m-symbol.json", folder / "m-0000.params", ["data"],
                                  [(12,)], mx.cpu())
    predictor.set_max_batch_size(4)
    rng = np.random.default_rng(2)
    for n in (4, 1, 3, 2, 4, 9):  # 9: more than any bucket, run in slices
        x = rng.uniform(0, 200, (n, 12))
        given = (mx.nd.array(x, dtype="float16") if kind == "ndarray"
                 else x.astype(kind))
        reference = given.asnumpy() if kind == "ndarray" else given
        out = predictor.forward([given])[0].asnumpy()
        assert out.shape == (n, 5)
        np.testing.assert_allclose(out, expected(reference.astype(np.float32)), rtol=1e-4,
                                   atol=1e-3)


def test_copy_rows_writes_only_the_leading_rows():
    target = mx.nd.full((4, 3), -1.0)
    copy_rows(np.arange(6, dtype=np.float32).reshape(2, 3), target)
    np.testing.assert_array_equal(target.asnumpy(), [[0, 1, 2], [3, 4, 5], [-1] * 3, [-1] * 3])
    copy_rows(mx.nd.ones((4, 3), dtype="int32"), target)
    np.testing.assert_array_equal(target.asnumpy(), np.ones((4, 3)))
