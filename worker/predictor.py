"""Forward passes over variable batch sizes without rebinding per request.

An MXNet executor is bound for fixed input shapes. Rebinding for every batch size costs
milliseconds and memory; instead the predictor binds once for the largest batch size and
derives an executor for each smaller size on first use with `Executor.reshape`, which shares
the weights and (because it only shrinks) the activation memory of the largest. Every size
gets its own executor, so no batch is padded (padding to power-of-two sizes costs a large
share of throughput on odd sizes; docs/benchmarks.md). With MKLDNN's subgraph backend each
reshaped executor caches its own fused weights, which is why workers run with
MXNET_SUBGRAPH_BACKEND=NONE by default (worker/broker/pool.py). The loaded parameters are
dropped once copied into the executor (one copy of the weights, not two) and re-read from
the file if the executor is ever rebound. BatchNorms after convolutions are folded into them
first (worker/batchnorm_folding.py), which is most of what the subgraph backend's fusion
gained at batch 1, without its per-executor copies.

Call it from one long-lived thread only (MXNet leaks memory per short-lived thread).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import mxnet as mx
import numpy as np

from mxserve.common.errors import ArchiveError, exception_text
from mxserve.worker.batchnorm_folding import Fold, apply_folds, plan_folds

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_SHAPE_VARIANTS = 8  # distinct non-batch input shapes kept bound (signatures with 0 dims)


def activation_bytes_per_sample(symbol_path: Path, input_shapes: dict[str, tuple[int, ...]]
                                ) -> int | None:
    """Bytes of every operator output for one sample (`input_shapes` with batch 1), as
    float32 and as if no buffer were reused: an upper bound of what one more sample in a
    batch costs (buffer reuse makes the real cost about half). None when the
    shapes cannot be inferred (the predictor reports why, later)."""
    try:
        symbol = mx.sym.load(str(symbol_path))
        internals = symbol.get_internals()
        _, shapes, _ = internals.infer_shape(**input_shapes)
    except (mx.base.MXNetError, ValueError, TypeError):
        return None
    if shapes is None:
        return None
    variables = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    return 4 * sum(math.prod(shape) for name, shape in zip(internals.list_outputs(), shapes)
                   if name not in variables)


def run_here(forward: Callable[[], T]) -> T:
    """Run a forward on the calling thread (a predictor's default `run_forward`)."""
    return forward()


class Predictor:
    def __init__(self, symbol_path: Path, params_path: Path, input_names: Sequence[str],
                 sample_shapes: Sequence[tuple[int, ...]], ctx: mx.Context,
                 fold_batch_norm: bool = True) -> None:
        """`sample_shapes`: each input's shape without the batch axis, 0s replaced by 1."""
        self.run_forward: Callable[[Callable[[], Any]], Any] = run_here  # the worker may widen it
        try:
            self.symbol = mx.sym.load(str(symbol_path))
        except mx.base.MXNetError as exc:
            raise ArchiveError(f"cannot read the model's symbol: "
                               f"{exception_text(exc)}") from exc
        self.params_path = params_path
        self.ctx = ctx
        self.input_names = list(input_names)
        missing_inputs = [n for n in self.input_names if n not in self.symbol.list_arguments()]
        if missing_inputs:
            raise ArchiveError(f"signature inputs {missing_inputs} are not inputs of the symbol "
                               f"(its arguments: {self.symbol.list_arguments()[:8]}...)")
        self._bound_symbol: mx.sym.Symbol = self.symbol
        self._folds: list[Fold] = []
        if fold_batch_norm:
            self._bound_symbol, self._folds = plan_folds(self.symbol, *self._load_params())
            if self._folds:
                log.info("folding %d BatchNorm(s) into the convolutions before them",
                         len(self._folds))
        self.max_batch_size = 0
        self._default_shapes = tuple(tuple(s) for s in sample_shapes)
        self._executors: OrderedDict[tuple, mx.executor.Executor] = OrderedDict()
        self._base: mx.executor.Executor | None = None
        self.set_max_batch_size(1)

    def _load_params(self) -> tuple[dict, dict]:
        try:
            loaded = mx.nd.load(str(self.params_path))
        except mx.base.MXNetError as exc:
            raise ArchiveError(f"cannot read {self.params_path.name}: "
                               f"{exception_text(exc)}") from exc
        if not isinstance(loaded, dict):
            raise ArchiveError(f"{self.params_path.name} holds no named parameters")
        args: dict[str, mx.nd.NDArray] = {}
        auxs: dict[str, mx.nd.NDArray] = {}
        arg_names = set(self.symbol.list_arguments())
        for key, value in loaded.items():
            kind, _, name = key.partition(":")
            if not name:  # saved without the arg:/aux: prefix
                kind, name = ("arg" if key in arg_names else "aux"), key
            (args if kind == "arg" else auxs)[name] = value
        return args, auxs

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """(Re)bind for the largest batch; each smaller size is derived from it on first use."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self._executors.clear()
        self._base = None
        self._base = self._bind(max_batch_size, self._default_shapes)

    def _bind(self, batch: int, shapes: tuple[tuple[int, ...], ...]) -> mx.executor.Executor:
        input_shapes = {n: (batch, *s) for n, s in zip(self.input_names, shapes)}
        exe = self._bound_symbol.simple_bind(self.ctx, grad_req="null", **input_shapes)
        arg_params, aux_params = self._load_params()
        if self._folds:
            arg_params = apply_folds(self._folds, arg_params, aux_params)
        missing = []
        for name, array in exe.arg_dict.items():
            if name in input_shapes:
                continue
            if name in arg_params:
                self._copy_param(name, arg_params[name], array)
            else:
                missing.append(name)  # e.g. softmax_label: MMS 0.4 bound with allow_missing
                array[:] = 0
        for name, array in exe.aux_dict.items():
            if name not in aux_params:
                raise ArchiveError(f"auxiliary state {name!r} is missing from the parameters")
            self._copy_param(name, aux_params[name], array)
        mx.nd.waitall()  # the copies are done: the loaded arrays can go
        if missing:
            log.info("arguments not in the parameter file, zero-filled: %s", missing)
        self._executors[(batch, shapes)] = exe
        return exe

    @staticmethod
    def _copy_param(name: str, value: mx.nd.NDArray, target: mx.nd.NDArray) -> None:
        if value.shape != target.shape:
            raise ArchiveError(f"parameter {name!r} has shape {value.shape}, the symbol needs "
                               f"{target.shape}")
        value.copyto(target)

    def _executor(self, size: int, shapes: tuple[tuple[int, ...], ...]) -> mx.executor.Executor:
        key = (size, shapes)
        exe = self._executors.get(key)
        if exe is not None:
            self._executors.move_to_end(key)
            return exe
        assert self._base is not None
        grow = shapes != self._default_shapes
        exe = self._base.reshape(partial_shaping=False, allow_up_sizing=grow,
                                 **{n: (size, *s) for n, s in zip(self.input_names, shapes)})
        self._executors[key] = exe
        if len(self._executors) > self.max_batch_size * MAX_SHAPE_VARIANTS:
            oldest = next(k for k in self._executors if k[1] != self._default_shapes)
            del self._executors[oldest]
        return exe

    def warm_up(self) -> None:
        """One forward at every batch size, so MKLDNN builds its primitives (and the process
        reaches its steady memory) before the first request, not during it."""
        zeros = [np.zeros((self.max_batch_size, *s), np.float32) for s in self._default_shapes]
        for size in range(1, self.max_batch_size + 1):
            for out in self.forward([z[:size] for z in zeros]):
                out.wait_to_read()

    def forward(self, inputs: Sequence[np.ndarray | mx.nd.NDArray]) -> list[mx.nd.NDArray]:
        """Run one forward on stacked inputs (batch axis 0); returns outputs cut to n rows."""
        n = inputs[0].shape[0]
        if n > self.max_batch_size:
            # Larger than any executor (a custom service stacked more): run in slices. Each
            # slice's outputs are copied: they are views of the executor's output buffers,
            # which the next slice's forward overwrites.
            parts = [[out.copy() for out in self.forward([x[i:i + self.max_batch_size]
                                                          for x in inputs])]
                     for i in range(0, n, self.max_batch_size)]
            return [mx.nd.concat(*pieces, dim=0) for pieces in zip(*parts)]
        shapes = tuple(tuple(x.shape[1:]) for x in inputs)
        exe = self._executor(n, shapes)
        for name, value in zip(self.input_names, inputs):
            copy_rows(value, exe.arg_dict[name])
        self.run_forward(lambda: exe.forward(is_train=False))
        return [out[:n] for out in exe.outputs]


def copy_rows(value: np.ndarray | mx.nd.NDArray, target: mx.nd.NDArray) -> None:
    """target[:len(value)] = value, without NDArray.__setitem__: its general indexing costs
    more Python per call than a small model's whole forward; a leading
    axis-0 slice is a view (MXNDArraySlice) and the copy goes straight into it."""
    n = value.shape[0]
    rows = target if n == target.shape[0] else target[:n]
    if isinstance(value, mx.nd.NDArray):
        value.astype(rows.dtype, copy=False).copyto(rows)
    else:
        rows._sync_copyfrom(value)  # what `rows[:] = value` ends in; casts like it does
