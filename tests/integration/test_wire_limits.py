"""Answers travel in frames of their own: a large answer is served whole and fast, one over
max_reply_bytes fails alone and at once, a NaN answer is a clear error, and a request
beside them is not held up."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DATA
from tests.server_harness import Server


@pytest.fixture(scope="module")
def large(sample_models):
    with Server([f"large={sample_models['noop']}"], "--services",
                f"large={DATA / 'services' / 'large_answer.py'}",
                "--max-reply-bytes", str(4 * 1024 * 1024), "--max-batch-size", "8") as server:
        yield server


def ask(server, first: float):
    return requests.post(f"{server.url}/large/predict",
                         data={"data": json.dumps([[first, 0, 0, 0]])}, timeout=30)


def test_an_answer_larger_than_the_old_header_cap_is_served(large):
    started = time.monotonic()
    answer = ask(large, 300_000)  # more JSON than the msgpack header may carry
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["prediction"]) == 300_000
    assert time.monotonic() - started < 10


def test_an_answer_over_the_limit_fails_alone_and_fast(large):
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(ask, large, 2_000_000)  # over the server's 4 MiB max_reply_bytes
        small = pool.submit(ask, large, 0.25)
        refused, served = big.result(), small.result()
    assert refused.status_code == 500 and "max_reply_bytes" in refused.json()["message"]
    assert refused.elapsed.total_seconds() < 5
    assert served.status_code == 200 and served.json()["prediction"] == [[[0.25, 0, 0, 0]]]
    assert served.elapsed.total_seconds() < 5


def test_a_nan_answer_is_a_clear_error_not_invalid_json(large):
    answer = ask(large, -3)
    assert answer.status_code == 500 and "NaN" in answer.json()["message"]
    assert ask(large, 0.5).status_code == 200
