"""A batch in which some requests want the model's output tensors, not the service's answer.

Open Inference Protocol requests (KServe v2) ask for output tensors; MMS 0.4's /predict
asks for the service's JSON answer. Both kinds share one forward: the requests that go
through the service's `_preprocess` are stacked first, tensors already in the model's input
layout (`preprocessed`) after them, `_inference` runs once, the /predict rows go through
`_postprocess` as always, and the v2 rows are cut from the outputs as arrays. An output
asked for with a class count becomes that many "score:index:label" strings per sample (the
classification extension), computed here where the archive's synset is.
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Mapping, Sequence

import numpy as np

from mxserve.common.errors import InvalidInput
from mxserve.worker.services.base import SingleNodeService, concat_rows


def wants_tensors(outputs: Any) -> bool:
    """A request item's `outputs` field: None for the service's answer, else a map."""
    return outputs is not None


def checked_outputs(outputs: Any, names: Sequence[str]) -> dict[str, int]:
    """The requested outputs as {name: class count (0: the tensor)}; {} means all."""
    if not isinstance(outputs, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in outputs.items()):
        raise InvalidInput("requested outputs must map names to class counts")
    unknown = sorted(set(outputs) - set(names))
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(names)}")
    return dict(outputs) if outputs else {name: 0 for name in names}


def forward_mixed(service: Any, answers: Sequence[Sequence[Any]],
                  tensors: Sequence[tuple[Sequence[Any], bool, Mapping[str, int]]]
                  ) -> tuple[list[Any], list[dict[str, Any]]]:
    """One forward for both kinds. `answers`: the inputs of requests that want the service's
    answer; `tensors`: (inputs, preprocessed, {output: class count}) of those that want
    tensors. Returns the answers, then each tensor request's {output name: array, or JSON
    bytes of its class strings}."""
    if not isinstance(service, SingleNodeService):
        raise InvalidInput(f"{type(service).__name__} only answers whole requests "
                           "(inference), so it has no output tensors to send; use /predict")
    through_service = [*answers, *(inputs for inputs, pre, _ in tensors if not pre)]
    direct = [inputs for inputs, pre, _ in tensors if pre]
    parts: list[list[Any]] = []
    rows: list[int] = []
    if through_service:
        stacked, rows = service._preprocess_batch(through_service)
        parts = [[column] for column in stacked]
    for inputs in direct:
        rows.append(int(np.shape(inputs[0])[0]))
        if not parts:
            parts = [[] for _ in inputs]
        for k, array in enumerate(inputs):
            parts[k].append(np.asarray(array, dtype=np.float32))
    outputs = service._inference([concat_rows(column) for column in parts])
    bounds = list(itertools.accumulate(rows, initial=0))
    answer_rows = bounds[len(answers)]
    service_answers: list[Any] = []
    if answers:
        mine = outputs if answer_rows == bounds[-1] else [out[:answer_rows] for out in outputs]
        service_answers = service._postprocess_batch(mine, rows[:len(answers)])
    host = [out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out) for out in outputs]
    names = output_names(service, len(host))
    labels = getattr(service, "labels", None)
    # Where each tensor request's rows are: after the answers, those that went through
    # the service's preprocessing, then the direct ones, as they were stacked.
    stacked_order = ([i for i, (_, pre, _) in enumerate(tensors) if not pre]
                     + [i for i, (_, pre, _) in enumerate(tensors) if pre])
    slot_of = {request: len(answers) + slot for slot, request in enumerate(stacked_order)}
    tensor_answers = []
    for index, (_, _, wanted) in enumerate(tensors):
        a, b = bounds[slot_of[index]], bounds[slot_of[index] + 1]
        tensor_answers.append({
            name: classes(host[i][a:b], wanted[name], labels) if wanted[name] else
            np.ascontiguousarray(host[i][a:b])
            for i, name in enumerate(names) if name in wanted})
    return service_answers, tensor_answers


def output_names(service: Any, count: int) -> list[str]:
    """The outputs' names from the signature, in the symbol's order."""
    signature = getattr(service, "parsed_signature", None)
    names = [spec.name for spec in signature.outputs] if signature is not None else []
    return names if len(names) == count else [f"output{i}" for i in range(count)]


def classes(rows: np.ndarray, count: int, labels: Sequence[str] | None) -> bytes:
    """Each sample's `count` highest scores as "score:index:label" (":label" only where the
    model has labels), as JSON bytes of an N x count list."""
    flat = rows.reshape(len(rows), -1)
    count = min(count, flat.shape[1])
    answer = []
    for row in flat:
        top = np.argsort(-row, kind="stable")[:count]
        answer.append([f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels and i < len(labels)
                                             else "") for i in top])
    return json.dumps(answer).encode()
