"""BatchNorm folding: the folded graph computes what the original did, and only the
unambiguous BatchNorms are folded."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from mxserve.worker.batchnorm_folding import apply_folds, plan_folds


def _params(symbol: mx.sym.Symbol, shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=shape)
    args = {name: mx.nd.array(rng.normal(0.5, 0.3, s)) for name, s in
            zip(symbol.list_arguments(), arg_shapes) if name != "data"}
    # moving variance must be positive; means and betas far from 0 make mistakes visible
    auxs = {name: mx.nd.array(rng.uniform(0.2, 2.0, s) if "var" in name else rng.normal(1, 1, s))
            for name, s in zip(symbol.list_auxiliary_states(), aux_shapes)}
    return args, auxs


def fold_batch_norms(symbol, args, auxs):
    """What the predictor does: plan, apply; plus the parameters the folded graph reads."""
    folded, folds = plan_folds(symbol, args, auxs)
    new_args = apply_folds(folds, args, auxs)
    used = set(folded.list_arguments()) | set(folded.list_auxiliary_states())
    return (folded, {k: v for k, v in new_args.items() if k in used},
            {k: v for k, v in auxs.items() if k in used}, len(folds))


def _forward(symbol, args, auxs, x):
    exe = symbol.simple_bind(mx.cpu(), grad_req="null", data=x.shape)
    for name, array in {**args, **auxs}.items():
        target = exe.arg_dict.get(name, exe.aux_dict.get(name))
        array.copyto(target)
    exe.arg_dict["data"][:] = x
    exe.forward(is_train=False)
    return [out.asnumpy() for out in exe.outputs]


def _check(symbol, shape=(2, 3, 8, 8)):
    args, auxs = _params(symbol, shape)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    before = _forward(symbol, args, auxs, x)
    folded, new_args, new_auxs, count = fold_batch_norms(symbol, args, auxs)
    after = _forward(folded, new_args, new_auxs, x)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    return folded, count, args, new_args


def test_conv_bn_relu_chains_fold_and_compute_the_same():
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), pad=(1, 1), no_bias=True,
                           name="c1")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=1e-5, name="bn1")
    x = mx.sym.Activation(x, act_type="relu")
    x = mx.sym.Convolution(x, num_filter=5, kernel=(1, 1), name="c2")  # with a bias
    x = mx.sym.BatchNorm(x, name="bn2")  # fix_gamma=True, eps 1e-3 by default
    x = mx.sym.Convolution(x, num_filter=6, kernel=(3, 3), num_group=1, name="c3")
    x = mx.sym.BatchNorm(x, fix_gamma=False, name="bn3")
    folded, count, args, new_args = _check(x)
    assert count == 3
    assert "BatchNorm" not in folded.tojson()
    assert "bn1_gamma" not in new_args and "bn1_moving_mean" not in folded.list_auxiliary_states()
    assert args["c1_weight"].asnumpy().sum() != 0  # the caller's arrays are untouched
    np.testing.assert_array_equal(args["c1_weight"].asnumpy(),
                                  _params(x, (2, 3, 8, 8))[0]["c1_weight"].asnumpy())


def test_grouped_convolution_folds():
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=6, kernel=(3, 3), num_group=3, no_bias=True,
                           name="c")
    x = mx.sym.BatchNorm(x, fix_gamma=False, name="bn")
    _, count, _, _ = _check(x, shape=(1, 6, 5, 5))
    assert count == 1


@pytest.mark.parametrize("build", ["shared_conv_output", "bn_on_input", "residual_reads_conv"])
def test_ambiguous_batchnorms_are_left_alone(build):
    data = mx.sym.var("data")
    conv = mx.sym.Convolution(data, num_filter=3, kernel=(1, 1), no_bias=True, name="c")
    if build == "shared_conv_output":
        out = mx.sym.Group([mx.sym.BatchNorm(conv, fix_gamma=False, name="bn"), conv])
    elif build == "bn_on_input":
        out = mx.sym.Convolution(mx.sym.BatchNorm(data, name="bn"), num_filter=3,
                                 kernel=(1, 1), name="c2")
    else:
        out = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn") + conv
    folded, count, _, _ = _check(out)
    assert count == 0
    assert "BatchNorm" in folded.tojson()


def test_a_batchnorm_over_another_axis_is_left_alone():
    # Not run: MKLDNN's own fusion corrupts memory on this graph; only the decision matters.
    conv = mx.sym.Convolution(mx.sym.var("data"), num_filter=3, kernel=(1, 1), no_bias=True,
                              name="c")
    symbol = mx.sym.BatchNorm(conv, axis=3, fix_gamma=False, name="bn")
    args, auxs = _params(symbol, (2, 3, 8, 8))
    assert fold_batch_norms(symbol, args, auxs)[3] == 0


def test_the_predictor_folds_the_sample_resnet18_and_answers_the_same(sample_models, tmp_path):
    from mxserve.common.archive import load_archive
    from mxserve.worker.predictor import Predictor

    archive = load_archive(str(sample_models["resnet18"]), tmp_path)
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 224, 224)).astype(np.float32)
    outputs = []
    for fold in (False, True):
        predictor = Predictor(archive.symbol_path, archive.params_path, ["data"],
                                      [(3, 224, 224)], mx.cpu(), fold_batch_norm=fold)
        predictor.set_max_batch_size(4)
        outputs.append(predictor.forward([x])[0].asnumpy())
        assert len(predictor._folds) == (20 if fold else 0)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    assert (outputs[0].argmax(axis=1) == outputs[1].argmax(axis=1)).all()
