"""Dynamic batching through the real stack, observed in each response's Server-Timing."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.server_harness import Server


def batch_size(response: requests.Response) -> int:
    return int(re.search(r"batch;desc=(\d+)", response.headers["Server-Timing"]).group(1))


def timings(response: requests.Response) -> dict[str, float]:
    return {name: float(value) for name, value in
            re.findall(r"(\w+);dur=([\d.]+)", response.headers["Server-Timing"])}


@pytest.fixture(scope="module")
def batching(sample_models):
    """The noop model three times over: at the defaults, with 400 ms of patience and room
    for 6 ("gathered"), and with batches of one ("single"); and resnet18."""
    noop = sample_models["noop"]
    with Server([f"noop={noop}", f"gathered={noop}", f"single={noop}",
                 f"resnet18={sample_models['resnet18']}"],
                "--batching", "gathered=6:400", "single=1:200") as server:
        yield server


def post_concurrently(server: Server, model: str, count: int) -> list[requests.Response]:
    def post(i: int) -> requests.Response:
        return requests.post(f"{server.url}/{model}/predict",
                             data={"data": f"[[{i}, {i}, {i}, {i}]]"}, timeout=30)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def test_a_batch_delay_gathers_concurrent_requests_into_one_forward(batching):
    # 400 ms of patience and room for 6: six concurrent requests leave as one batch.
    responses = post_concurrently(batching, "gathered", 6)
    assert [r.status_code for r in responses] == [200] * 6
    for i, response in enumerate(responses):  # each got its own answer back
        assert response.json()["prediction"] == [[[float(i)] * 4]]
    assert max(batch_size(r) for r in responses) >= 4
    # Server-Timing nests: the broker's wait on the worker holds the inference, and the
    # frontend's wait on the broker holds the queue and the worker (2-decimal ms).
    for response in responses:
        t = timings(response)
        assert t["inference"] <= t["worker"] <= t["broker"]
        assert t["queue"] + t["worker"] <= t["broker"] + 0.02


def test_max_batch_size_one_means_no_batching(batching):
    responses = post_concurrently(batching, "single", 8)
    assert [r.status_code for r in responses] == [200] * 8
    assert {batch_size(r) for r in responses} == {1}


def test_each_worker_caps_the_batch_by_its_models_activation_memory(batching, sample_models):
    """Default max batch 32: resnet18 (32.6 MiB of activations per sample) is capped at 4
    by batch_memory_mb 144, noop takes 32, and the broker never sends more than the cap."""
    models = batching.catalog()["models"]
    assert models["resnet18"]["max_batch_size"] == 32
    assert models["resnet18"]["worker_max_batch_size"] == 4
    assert models["noop"]["worker_max_batch_size"] == 32
    assert "max batch size 32 -> 4" in batching.log_text()
    image = (sample_models["resnet18"].parent / "examples" / "china.jpg").read_bytes()

    def post(_: int) -> requests.Response:
        return requests.post(f"{batching.url}/resnet18/predict", files={"data": image},
                             timeout=60)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert max(batch_size(r) for r in responses) <= 4
