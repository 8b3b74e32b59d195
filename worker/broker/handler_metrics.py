"""What MMS 1.x handlers record through `context.metrics`, as Prometheus series labelled by
model (as TorchServe's custom metrics are).

Each entry a worker sends after a batch (worker/services/handler_metrics.py) becomes a
sample of the family `mxserve_handler_<name>[_<unit>]`, the name reduced to Prometheus's
alphabet and the unit kept in words (`PreprocessTime` in ms becomes
`mxserve_handler_PreprocessTime_milliseconds`). Its labels are `model` and the metric's
dimensions. How each kind is kept:

- `add_counter`: a counter (`..._total`), increased by the value;
- `add_time`, `add_size`: a summary (`..._sum`, `..._count`), so a mean and a rate follow;
- `add_percent`, `add_metric`: a gauge holding the latest value;
- `add_error`: a counter `mxserve_handler_<name>_errors_total` of how often it happened.

A handler cannot grow the registry without bound: each model may own MAX_SERIES_PER_MODEL
distinct series, and what passes that, or reuses a family name with another kind or other
labels, is counted in `mxserve_dropped_handler_metrics_total{model}` and logged once.
Only the broker records them, so the bound holds however many workers a model has.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any

from prometheus_client import Counter, Gauge, Summary

from mxserve.common.metrics import HANDLER_METRICS_DROPPED

log = logging.getLogger(__name__)

PREFIX = "mxserve_handler_"
MAX_SERIES_PER_MODEL = 100
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")
UNIT_WORDS = {"ms": "milliseconds", "s": "seconds", "B": "bytes", "kB": "kilobytes",
              "MB": "megabytes", "GB": "gigabytes", "percent": "percent", "count": "", "": ""}
_KINDS: dict[str, Any] = {"counter": Counter, "error": Counter, "time": Summary,
                          "size": Summary, "percent": Gauge, "metric": Gauge}


def family_name(kind: str, name: str, unit: str) -> str:
    words = UNIT_WORDS.get(unit)
    if words is None:
        words = _NOT_NAME.sub("_", unit).lower()
    stem = PREFIX + (_NOT_NAME.sub("_", name) or "_")
    if kind == "error":
        return stem + "_errors"
    return f"{stem}_{words}" if words else stem


def label_names(dimensions: list[list[str]]) -> tuple[str, ...]:
    """`model`, then each dimension's name in Prometheus's alphabet; a name that would
    clash with `model`, a reserved `__` name or another dimension gets a `dim_` prefix."""
    names = ["model"]
    for name, _ in dimensions:
        label = _NOT_NAME.sub("_", name) or "_"
        if label[0].isdigit():
            label = "_" + label
        while label in names or label.startswith("__"):
            label = "dim_" + label
        names.append(label)
    return tuple(names)


class HandlerMetrics:
    def __init__(self, max_series_per_model: int = MAX_SERIES_PER_MODEL) -> None:
        self.max_series = max_series_per_model
        self.families: dict[str, tuple[Any, tuple[str, ...], Any]] = {}
        self.series: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
        self.warned: set[str] = set()

    def record(self, model: str, entries: Any, dropped_by_worker: int = 0) -> None:
        """A batch's entries; malformed ones are dropped, never raised."""
        dropped = max(0, dropped_by_worker)
        for entry in entries if isinstance(entries, list) else ():
            if not self._record(model, entry):
                dropped += 1
        if dropped:
            HANDLER_METRICS_DROPPED.labels(model).inc(dropped)

    def _record(self, model: str, entry: Any) -> bool:
        if not (isinstance(entry, list) and len(entry) == 5):
            return False
        kind, name, unit, dimensions, value = entry
        if kind not in _KINDS or not isinstance(name, str) or not isinstance(unit, str) \
                or not _pairs(dimensions) or type(value) not in (int, float) \
                or not math.isfinite(value) or (_KINDS[kind] is Counter and value < 0):
            return False
        family = family_name(kind, name, unit)
        labels = label_names(dimensions)
        known = self.families.get(family)
        if known is not None and known[:2] != (_KINDS[kind], labels):
            return self._refuse(model, f"{family} is already recorded with another kind or "
                                       "other dimensions")
        values = (model, *(value for _, value in dimensions))
        owned = self.series.setdefault(model, set())
        new = (family, values) not in owned
        if new and len(owned) >= self.max_series:
            return self._refuse(model, f"it already has {self.max_series} series")
        if known is None:
            known = self._family(model, family, kind, name, unit, labels)
            if known is None:
                return False
        if new:
            owned.add((family, values))
        child = known[2].labels(*values)
        if known[0] is Counter:
            child.inc(value)
        elif known[0] is Summary:
            child.observe(value)
        else:
            child.set(value)
        return True

    def _family(self, model: str, family: str, kind: str, name: str, unit: str,
                labels: tuple[str, ...]) -> tuple[Any, tuple[str, ...], Any] | None:
        cls = _KINDS[kind]
        what = f"Recorded by the model's handler: {name} ({kind}" + (f", {unit})" if unit
                                                                     else ")")
        try:
            metric = cls(family, what, list(labels),
                         **({"multiprocess_mode": "mostrecent"} if cls is Gauge else {}))
        except ValueError as exc:  # a name mxserve's own metrics already hold
            self._refuse(model, str(exc))
            return None
        self.families[family] = (cls, labels, metric)
        return self.families[family]

    def _refuse(self, model: str, why: str) -> bool:
        if model not in self.warned:
            self.warned.add(model)
            log.warning("model %s: handler metrics dropped from now on when new: %s",
                        model, why)
        return False


def _pairs(dimensions: Any) -> bool:
    return isinstance(dimensions, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        for pair in dimensions)
