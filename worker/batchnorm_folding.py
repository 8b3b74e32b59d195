"""Folding inference-mode BatchNorm into the Convolution before it.

At inference a BatchNorm after a convolution is a per-channel affine map, so it can live in
the convolution's weights and bias instead (the rewrite inference compilers do first):

    scale = gamma / sqrt(moving_var + eps)          (gamma = 1 when fix_gamma)
    W'    = W * scale   (per output channel)
    b'    = (b - moving_mean) * scale + beta        (b = 0 without a bias)

One pass over the activations fewer per BatchNorm, and fewer parameters; the outputs are
the same within float rounding (the speed-up is in docs/benchmarks.md).

Only the unambiguous case is rewritten: a BatchNorm on channel axis 1 whose input is an
NCHW Convolution used by nothing else, whose own extra outputs (batch mean and variance)
nobody reads, and whose beta variable feeds only it (beta's node becomes the convolution's
bias). Everything else is left as it was. The caller's parameter dicts are not modified.

Planned from the parameters' names and shapes before binding, applied to the values after:
the predictor binds first and loads the weights second, as without folding, so the loaded
copy is freed above the executor's memory (loading first leaves a hole in the heap).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import mxnet as mx
import numpy as np

DEFAULT_EPS = 1e-3  # MXNet's BatchNorm default, when the symbol does not say


@dataclass(frozen=True)
class Fold:
    """One BatchNorm folded into a convolution: the parameter names involved."""

    weight: str
    conv_bias: str | None  # the convolution's own bias, if it had one
    gamma: str | None  # None when fix_gamma (gamma is 1)
    beta: str  # its variable becomes the convolution's bias
    mean: str
    var: str
    eps: float


def plan_folds(symbol: mx.sym.Symbol, args: Mapping[str, Any], auxs: Mapping[str, Any]
               ) -> tuple[mx.sym.Symbol, list[Fold]]:
    """The rewritten symbol and what to fold. Only the parameters' names and shapes are
    read: the predictor plans once, then binds, then folds the values it loads."""
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    readers: dict[int, list[tuple[int, int]]] = {}  # node -> [(reader, output index)]
    for index, node in enumerate(nodes):
        for source, output, *_ in node["inputs"]:
            readers.setdefault(source, []).append((index, output))
    for source, output, *_ in graph["heads"]:
        readers.setdefault(source, []).append((-1, output))
    replaced: dict[int, int] = {}  # BatchNorm node -> the convolution now producing it
    folds = []
    for index, node in enumerate(nodes):
        conv_index = _foldable(nodes, readers, index, args, auxs)
        if conv_index is None:
            continue
        conv, attrs = nodes[conv_index], node.get("attrs", {})
        gamma, beta, mean, var = (nodes[i]["name"] for i, *_ in node["inputs"][1:5])
        folds.append(Fold(weight=nodes[conv["inputs"][1][0]]["name"],
                          conv_bias=nodes[conv["inputs"][2][0]]["name"] if _has_bias(conv)
                          else None,
                          gamma=None if _true(attrs.get("fix_gamma", "True")) else gamma,
                          beta=beta, mean=mean, var=var,
                          eps=float(attrs.get("eps", DEFAULT_EPS))))
        conv["attrs"] = {**conv.get("attrs", {}), "no_bias": "False"}
        conv["inputs"] = [*conv["inputs"][:2], node["inputs"][2]]
        replaced[index] = conv_index
    if not replaced:
        return symbol, []
    for node in nodes:
        node["inputs"] = [[replaced.get(source, source), *rest] for source, *rest in node["inputs"]]
    graph["heads"] = [[replaced.get(source, source), *rest] for source, *rest in graph["heads"]]
    return mx.sym.load_json(json.dumps(graph)), folds


def apply_folds(folds: list[Fold], args: dict[str, mx.nd.NDArray],
                auxs: dict[str, mx.nd.NDArray]) -> dict[str, mx.nd.NDArray]:
    """A copy of `args` holding the folded weights and biases (computed in float64)."""
    args = dict(args)
    for fold in folds:
        weight = args[fold.weight]
        scale = 1.0 / np.sqrt(auxs[fold.var].asnumpy().astype(np.float64) + fold.eps)
        if fold.gamma is not None:
            scale = scale * args[fold.gamma].asnumpy()
        bias = (args[fold.conv_bias].asnumpy().astype(np.float64) if fold.conv_bias
                else np.zeros_like(scale))
        folded_bias = (bias - auxs[fold.mean].asnumpy()) * scale + args[fold.beta].asnumpy()
        args[fold.weight] = mx.nd.array(
            weight.asnumpy() * scale.reshape(-1, *[1] * (weight.ndim - 1)), dtype=weight.dtype)
        args[fold.beta] = mx.nd.array(folded_bias, dtype=weight.dtype)
    return args


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1")


def _has_bias(conv: dict[str, Any]) -> bool:
    return not _true(conv.get("attrs", {}).get("no_bias", "False")) and len(conv["inputs"]) > 2


def _foldable(nodes: list[dict[str, Any]], readers: dict[int, list[tuple[int, int]]],
              index: int, args: Mapping[str, Any], auxs: Mapping[str, Any]) -> int | None:
    """The index of the convolution this BatchNorm can fold into, or None."""
    node = nodes[index]
    if node["op"] != "BatchNorm" or len(node["inputs"]) != 5:
        return None
    if node.get("attrs", {}).get("axis", "1") != "1":
        return None
    if any(output != 0 for _, output in readers.get(index, [])):
        return None  # someone reads the batch mean or variance
    conv_index, conv_output, *_ = node["inputs"][0]
    conv = nodes[conv_index]
    if conv["op"] != "Convolution" or conv_output != 0:
        return None
    if conv.get("attrs", {}).get("layout", "NCHW") not in ("NCHW", "NCW", "NCDHW"):
        return None
    if readers.get(conv_index) != [(index, 0)]:
        return None  # the unnormalised convolution output is read elsewhere too
    gamma, beta, mean, var = (nodes[i]["name"] for i, *_ in node["inputs"][1:5])
    weight_node = conv["inputs"][1][0]
    beta_node = node["inputs"][2][0]
    if readers.get(beta_node) != [(index, 0)] or readers.get(weight_node) != [(conv_index, 0)]:
        return None  # shared parameters: rewriting them would change another layer
    weight = nodes[weight_node]["name"]
    if not ({gamma, beta, weight} <= args.keys() and {mean, var} <= auxs.keys()):
        return None
    if _has_bias(conv) and nodes[conv["inputs"][2][0]]["name"] not in args:
        return None
    channels = args[weight].shape[0]
    if any(array.shape != (channels,) for array in
           (args[gamma], args[beta], auxs[mean], auxs[var])):
        return None
    return conv_index
