"""ModelService classes with MMS 0.4's contract, run on whole batches.

The 0.4 contract, kept so custom services port over: a service has `_preprocess(data)`,
`_inference(data)`, `_postprocess(data)`, `signature` and `ping()`, and `inference(data)`
chains the three for one request (`data` is the list of that request's inputs, in
signature order).

What mxserve adds: `handle_batch(requests)` takes N requests at once. It preprocesses each
request with the service's own `_preprocess` (one-row NDArrays, as in 0.4), concatenates
them on the batch axis, runs ONE `_inference`, cuts the outputs back into per-request rows
and calls `_postprocess` per request, so a 0.4 service's per-request code sees exactly
what it saw in 0.4. The built-in services replace the per-request loops with vectorised
numpy when (and only when) a subclass has not overridden the hook in question.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import mxnet as mx
import numpy as np

from mxserve.common.errors import ArchiveError
from mxserve.common.signature import parse_signature
from mxserve.worker.predictor import Predictor

log = logging.getLogger(__name__)

Request = Sequence[Any]  # one request: its inputs in signature order


class ModelService(ABC):
    """The 0.4 root class: anything with inference, ping and signature."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict, gpu: int | None = None):
        self.model_name = model_name
        self.model_dir = model_dir
        self.manifest = manifest
        self.gpu = gpu

    @abstractmethod
    def inference(self, data: Request) -> Any: ...

    @abstractmethod
    def ping(self) -> Any: ...

    @property
    @abstractmethod
    def signature(self) -> dict: ...

    def handle_batch(self, requests: Sequence[Request]) -> list[Any]:
        """One answer per request; the default runs them one at a time."""
        return [self.inference(request) for request in requests]

    def set_max_batch_size(self, max_batch_size: int) -> None:  # noqa: B027 (optional hook)
        """Called once by the worker before serving; services that bind shapes bind here."""


class SingleNodeService(ModelService):
    """pre -> inference -> post, for one request (`inference`) or a batch (`handle_batch`)."""

    def inference(self, data: Request) -> Any:
        return self._postprocess(self._inference(self._preprocess(data)))

    @abstractmethod
    def _preprocess(self, data: Request) -> list: ...

    @abstractmethod
    def _inference(self, data: list) -> list: ...

    @abstractmethod
    def _postprocess(self, data: list) -> Any: ...

    def handle_batch(self, requests: Sequence[Request]) -> list[Any]:
        stacked, rows = self._preprocess_batch(requests)
        outputs = self._inference(stacked)
        return self._postprocess_batch(outputs, rows)

    def _preprocess_batch(self, requests: Sequence[Request]) -> tuple[list, list[int]]:
        """Per-request `_preprocess`, then concatenation on the batch axis."""
        per_request = [list(self._preprocess(request)) for request in requests]
        rows = [int(first.shape[0]) for first, *_ in per_request]
        stacked = [concat_rows([pre[k] for pre in per_request]) for k in range(len(per_request[0]))]
        return stacked, rows

    def _postprocess_batch(self, outputs: Sequence[Any], rows: Sequence[int]) -> list[Any]:
        """Cut each output back into per-request rows, then per-request `_postprocess`."""
        answers = []
        start = 0
        for count in rows:
            answers.append(self._postprocess([out[start:start + count] for out in outputs]))
            start += count
        return answers

    def _overridden(self, name: str, base: type) -> bool:
        """Whether a subclass replaced `base.name` (then its per-request hook must run)."""
        return getattr(type(self), name) is not getattr(base, name)


class MXNetBaseService(SingleNodeService):
    """JSON tensors in, output tensors out (as nested lists)."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict, gpu: int | None = None):
        super().__init__(model_name, model_dir, manifest, gpu)
        self.ctx = mx.gpu(int(gpu)) if gpu is not None else mx.cpu()
        model = manifest["Model"]
        signature_path = os.path.join(model_dir, model["Signature"])
        try:
            with open(signature_path, encoding="utf-8") as f:
                self._signature = json.load(f)
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"cannot read {model['Signature']}: {exc}") from exc
        self.parsed_signature = parse_signature(self._signature, model["Signature"])
        # Bind with 0 ("any") axes as 1, like 0.4; other sizes get their own executor.
        sample_shapes = [tuple(d or 1 for d in spec.shape[1:])
                         for spec in self.parsed_signature.inputs]
        self.predictor = Predictor(
            symbol_path=Path(model_dir) / model["Symbol"],
            params_path=Path(model_dir) / model["Parameters"],
            input_names=[spec.name for spec in self.parsed_signature.inputs],
            sample_shapes=sample_shapes, ctx=self.ctx)
        synset = os.path.join(model_dir, "synset.txt")
        if os.path.isfile(synset):
            with open(synset, encoding="utf-8") as f:
                self.labels = [line.strip() for line in f.read().splitlines()]

    def set_max_batch_size(self, max_batch_size: int) -> None:
        self.predictor.set_max_batch_size(max_batch_size)
        self.predictor.warm_up()

    def _preprocess(self, data: Request) -> list:
        return [mx.nd.array(d) for d in data]

    def _inference(self, data: list) -> list:
        arrays = [d.astype(np.float32, copy=False) if isinstance(d, np.ndarray)
                  else d.as_in_context(self.ctx) for d in data]
        return self.predictor.forward(arrays)

    def _postprocess(self, data: list) -> Any:
        return [d.asnumpy().tolist() for d in data]

    def _preprocess_batch(self, requests: Sequence[Request]) -> tuple[list, list[int]]:
        if self._overridden("_preprocess", MXNetBaseService):
            return super()._preprocess_batch(requests)
        rows = [int(np.shape(request[0])[0]) for request in requests]
        stacked = [np.concatenate([np.asarray(r[k], dtype=np.float32) for r in requests])
                   for k in range(len(requests[0]))]
        return stacked, rows

    def _postprocess_batch(self, outputs: Sequence[Any], rows: Sequence[int]) -> list[Any]:
        if self._overridden("_postprocess", MXNetBaseService):
            return super()._postprocess_batch(outputs, rows)
        host = [out.asnumpy() for out in outputs]  # one device->host copy per output
        bounds = list(itertools.accumulate(rows, initial=0))  # np.cumsum is slower on a short list
        return [[h[a:b].tolist() for h in host] for a, b in zip(bounds[:-1], bounds[1:])]

    def ping(self) -> str:
        return mx.__version__

    @property
    def signature(self) -> dict:
        return self._signature


def concat_rows(parts: list) -> Any:
    """Per-request arrays (numpy or NDArray) joined on the batch axis."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return mx.nd.concat(*[p if isinstance(p, mx.nd.NDArray) else mx.nd.array(p) for p in parts],
                        dim=0)
