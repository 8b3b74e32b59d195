"""context.metrics as MMS 1.x's MetricsStore takes it, and the broker's bounded Prometheus
families."""
from __future__ import annotations

import math

import pytest
from prometheus_client import REGISTRY, generate_latest

from mxserve.worker.broker.handler_metrics import HandlerMetrics, family_name, label_names
from mxserve.worker.services.handler_metrics import MAX_ENTRIES, Dimension, MetricsStore


def store() -> MetricsStore:
    return MetricsStore({0: "a", 1: "b"}, "m")


def test_the_methods_take_mms_1_x_signatures_and_units():
    s = store()
    s.add_time("PreprocessTime", 3.2)
    s.add_time("T", 1, idx=1, unit="s", dimensions=[Dimension("Stage", "x")])
    s.add_size("S", 2.5, 0, "kB")
    s.add_percent("P", 50, idx=0)
    s.add_metric("G", 7, unit="things")
    s.add_error("Oops", "a message")
    with pytest.raises(ValueError):
        s.add_time("T", 1, unit="minutes")
    with pytest.raises(ValueError):
        s.add_size("S", 1, unit="TB")
    with pytest.raises(ValueError):
        s.add_counter("C", 1, dimensions=Dimension("not", "a list"))
    assert ["time", "PreprocessTime", "ms", [], 3.2] in s.entries()
    assert ["time", "T", "s", [["Stage", "x"]], 1] in s.entries()
    assert ["error", "Oops", "", [], 1] in s.entries()
    assert ["metric", "G", "things", [], 7] in s.entries()


def test_a_counter_adds_up_and_other_kinds_keep_the_last_value_per_request():
    s = store()
    for value in (1, 2, 3):
        s.add_counter("C", value)
        s.add_time("T", value, idx=0)
    s.add_time("T", 9, idx=1)
    assert ["counter", "C", "count", [], 6] in s.entries()
    assert sorted(e[4] for e in s.entries() if e[1] == "T") == [3, 9]


def test_what_is_not_a_finite_number_or_past_the_cap_is_dropped_not_raised():
    s = store()
    for bad in ("3", None, math.nan, math.inf, True):
        s.add_time("T", bad)
    for n in range(MAX_ENTRIES + 10):
        s.add_time(f"N{n}", 1.0)
    assert len(s.entries()) == MAX_ENTRIES and s.dropped == 5 + 10


def test_family_names_keep_the_unit_and_prometheus_s_alphabet():
    assert family_name("time", "PreprocessTime", "ms") == \
        "mxserve_handler_PreprocessTime_milliseconds"
    assert family_name("counter", "a.b c\n", "count") == "mxserve_handler_a_b_c_"
    assert family_name("metric", "x", "Req/s") == "mxserve_handler_x_req_s"
    assert family_name("error", "Bad", "") == "mxserve_handler_Bad_errors"
    assert label_names([["model", "x"], ["__x", "y"], ["9a", "z"], ["model", "w"]]) == \
        ("model", "dim_model", "dim___x", "_9a", "dim_dim_model")


def test_each_model_owns_a_bounded_number_of_series():
    metrics = HandlerMetrics(max_series_per_model=3)
    entries = [["time", f"UnitFlood{n}", "ms", [], 1.0] for n in range(10)]
    metrics.record("unit-a", entries)
    metrics.record("unit-b", entries[:2])
    text = generate_latest(REGISTRY).decode()
    assert text.count('_count{model="unit-a"}') == 3
    assert text.count('_count{model="unit-b"}') == 2
    assert 'mxserve_dropped_handler_metrics_total{model="unit-a"} 7.0' in text


def test_malformed_entries_and_kind_clashes_are_dropped():
    metrics = HandlerMetrics()
    metrics.record("unit-c", [["counter", "UnitClash", "", [], 1],
                              ["metric", "UnitClash", "", [], 2],  # a gauge of the same name
                              ["counter", "UnitNeg", "", [], -1],
                              ["nope", "x", "", [], 1], ["time", 1, "ms", [], 1], "junk",
                              ["time", "UnitDims", "ms", [["a"]], 1]], 4)
    text = generate_latest(REGISTRY).decode()
    assert 'mxserve_handler_UnitClash_total{model="unit-c"} 1.0' in text
    assert 'mxserve_dropped_handler_metrics_total{model="unit-c"} 10.0' in text
