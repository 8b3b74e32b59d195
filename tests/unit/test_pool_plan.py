"""Worker placement: one worker per GPU per model, pinned; CPU workers share the cores."""
from __future__ import annotations

import pytest

from mxserve.worker.broker.pool import plan_workers


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_one_worker_per_gpu_per_model_pinned(gpus):
    plan = plan_workers(["a", "b"], gpus=gpus, cores=16)
    assert len(plan) == 2 * gpus
    for model in ("a", "b"):
        pinned = [w.env["CUDA_VISIBLE_DEVICES"] for w in plan if w.model == model]
        assert pinned == [str(g) for g in range(gpus)]


def test_mms04_gpu_flag_pins_to_that_gpu():
    plan = plan_workers(["a", "b"], gpu=3, cores=8)
    assert [(w.model, w.gpu, w.env["CUDA_VISIBLE_DEVICES"]) for w in plan] == [
        ("a", 3, "3"), ("b", 3, "3")]


def test_cpu_workers_split_the_cores():
    plan = plan_workers(["a"], workers_per_model=2, cores=2)
    assert [w.threads for w in plan] == [1, 1]
    assert all("CUDA_VISIBLE_DEVICES" not in w.env and w.env["OMP_NUM_THREADS"] == "1"
               for w in plan)
    assert [w.threads for w in plan_workers(["a"], cores=8)] == [8]
    assert [w.threads for w in plan_workers(["a", "b", "c"], cores=2)] == [1, 1, 1]
    assert [w.threads for w in plan_workers(["a"], threads_per_worker=3, cores=2)] == [3]


def test_cpu_workers_run_the_naive_engine_gpu_workers_the_threaded_one(monkeypatch):
    monkeypatch.delenv("MXNET_ENGINE_TYPE", raising=False)
    assert plan_workers(["a"], cores=2)[0].env["MXNET_ENGINE_TYPE"] == "NaiveEngine"
    assert "MXNET_ENGINE_TYPE" not in plan_workers(["a"], gpus=1, cores=2)[0].env
    monkeypatch.setenv("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")  # the operator's wins
    assert plan_workers(["a"], cores=2)[0].env["MXNET_ENGINE_TYPE"] == "ThreadedEnginePerDevice"
