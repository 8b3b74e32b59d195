"""`context.metrics`: what an MMS 1.x handler records about a batch, as MMS 1.x's
`mms.metrics.metrics_store.MetricsStore` takes it.

A new store is given to the handler for each batch, with MMS 1.x's methods and signatures
(`add_counter`, `add_time`, `add_size`, `add_percent`, `add_error`, `add_metric`, each with
its `idx`, `unit` and `dimensions`) and its rules: a time is in ms or s, a size in B, kB, MB
or GB, a counter adds up within the batch, anything else keeps its last value per request.
After the batch the worker sends `entries()` to the broker, which turns them into
Prometheus series labelled by model (worker/broker/handler_metrics.py).

A handler is not trusted to be frugal: the store keeps at most MAX_ENTRIES distinct
metrics per batch and counts the rest as dropped, names and dimensions are cut to a
bounded length, and a value that is not a finite number is dropped rather than sent.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

log = logging.getLogger(__name__)

MAX_ENTRIES = 256  # distinct metrics one batch may send; the broker bounds series per model
MAX_NAME_CHARS = 128
MAX_DIMENSIONS = 8
MAX_DIMENSION_CHARS = 128
TIME_UNITS = ("ms", "s")
SIZE_UNITS = ("MB", "kB", "GB", "B")

# Entry kinds on the wire: how the broker records each.
COUNTER, TIME, SIZE, PERCENT, METRIC, ERROR = "counter", "time", "size", "percent", \
    "metric", "error"
KINDS = frozenset({COUNTER, TIME, SIZE, PERCENT, METRIC, ERROR})


class Dimension:
    """A name and a value that label a metric (MMS 1.x's `mms.metrics.dimension`)."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"Name": self.name, "Value": self.value}


class MetricsStore:
    def __init__(self, request_ids: Mapping[int, str], model_name: str) -> None:
        self.request_ids = request_ids
        self.model_name = model_name
        # (kind, name, unit, request id, dimensions) -> [kind, name, unit, dimensions, value]
        self.cache: dict[tuple[Any, ...], list[Any]] = {}
        self.dropped = 0

    def add_counter(self, name: str, value: float, idx: int | None = None,
                    dimensions: list[Any] | None = None) -> None:
        self._add(COUNTER, name, value, "count", idx, dimensions)

    def add_time(self, name: str, value: float, idx: int | None = None, unit: str = "ms",
                 dimensions: list[Any] | None = None) -> None:
        if unit not in TIME_UNITS:
            raise ValueError(f"the unit for a timed metric should be one of {list(TIME_UNITS)}")
        self._add(TIME, name, value, unit, idx, dimensions)

    def add_size(self, name: str, value: float, idx: int | None = None, unit: str = "MB",
                 dimensions: list[Any] | None = None) -> None:
        if unit not in SIZE_UNITS:
            raise ValueError("the unit for a size based metric is one of "
                             f"{list(SIZE_UNITS)}")
        self._add(SIZE, name, value, unit, idx, dimensions)

    def add_percent(self, name: str, value: float, idx: int | None = None,
                    dimensions: list[Any] | None = None) -> None:
        self._add(PERCENT, name, value, "percent", idx, dimensions)

    def add_error(self, name: str, value: Any, dimensions: list[Any] | None = None) -> None:
        # MMS 1.x's error value is a message; what Prometheus can count is that it happened.
        self._add(ERROR, name, 1, "", None, dimensions, error=True)

    def add_metric(self, name: str, value: float, idx: int | None = None,
                   unit: str | None = None, dimensions: list[Any] | None = None) -> None:
        self._add(METRIC, name, value, "" if unit is None else str(unit), idx, dimensions)

    def entries(self) -> list[list[Any]]:
        """What this batch recorded, for the broker: [kind, name, unit, [[dim, value]...],
        value] per distinct metric and request."""
        return list(self.cache.values())

    store = property(entries)  # MMS 1.x's name for the same list

    def _add(self, kind: str, name: Any, value: Any, unit: str, idx: int | None,
             dimensions: list[Any] | None, error: bool = False) -> None:
        if dimensions is not None and not isinstance(dimensions, list):
            raise ValueError("Please provide a list of dimensions")
        if type(value) not in (int, float) or not math.isfinite(value):
            self._drop(name, f"its value {value!r:.40} is not a finite number")
            return
        dims = _dimensions(dimensions or [])
        request = None if error else self._request_id(idx)
        key = (kind, str(name), unit, request, tuple(map(tuple, dims)))
        entry = self.cache.get(key)
        if entry is not None:
            entry[4] = entry[4] + value if kind in (COUNTER, ERROR) else value
        elif len(self.cache) >= MAX_ENTRIES:
            self._drop(name, f"a batch may record {MAX_ENTRIES} distinct metrics")
        else:
            self.cache[key] = [kind, str(name)[:MAX_NAME_CHARS], unit[:MAX_NAME_CHARS], dims,
                               value]

    def _request_id(self, idx: int | None) -> str | None:
        if idx is not None and idx in self.request_ids:
            return self.request_ids[idx]
        return ",".join(self.request_ids.values())

    def _drop(self, name: Any, why: str) -> None:
        if not self.dropped:
            log.warning("model %s: metric %.80r dropped: %s", self.model_name, name, why)
        self.dropped += 1


def _dimensions(dimensions: list[Any]) -> list[list[str]]:
    """MMS 1.x's Dimension objects (or anything with a name and a value) as pairs."""
    pairs = []
    for dimension in dimensions[:MAX_DIMENSIONS]:
        name, value = getattr(dimension, "name", None), getattr(dimension, "value", None)
        if name is None:
            raise ValueError(f"a dimension must have a name and a value, not {dimension!r:.80}")
        pairs.append([str(name)[:MAX_DIMENSION_CHARS], str(value)[:MAX_DIMENSION_CHARS]])
    return pairs
