"""The frontend's catalog cache: fresh within its TTL, one refresh at a time after it, and
a forced refresh for a model it does not know yet."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mxserve.common.errors import ModelNotFound
from mxserve.frontend import catalog as catalog_module
from mxserve.frontend.catalog import Catalog

SIGNATURE = {"input_type": "application/json", "output_type": "application/json",
             "inputs": [{"data_name": "data", "data_shape": [0, 4]}],
             "outputs": [{"data_name": "out", "data_shape": [0, 4]}]}


class CountingBroker:
    """Stands in for BrokerClient.catalog: counts calls, each taking `delay_s`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.models = {"a": model("a")}
        self._lock = threading.Lock()

    def catalog(self, timeout_s: float) -> dict:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return {"models": dict(self.models), "defaults": {name: name for name in self.models}}


def model(name: str) -> dict:
    """A catalog entry as the broker sends it (the parts the cache reads)."""
    return {"signature": SIGNATURE, "model_name": name, "version": "1.0"}


def signature(catalog: Catalog, name: str):
    """The signature the catalog routes `name` to, or None when it is not loaded."""
    try:
        snapshot, key = catalog.served(name)
    except ModelNotFound:
        return None
    return snapshot.signatures.get(key)


def test_within_the_ttl_no_call_reaches_the_broker():
    broker = CountingBroker()
    catalog = Catalog(broker)
    assert signature(catalog, "a") is not None
    for _ in range(100):
        signature(catalog, "a")
    assert broker.calls == 1


def test_after_the_ttl_one_thread_refreshes_while_the_others_use_the_old_snapshot(
        monkeypatch):
    broker = CountingBroker(delay_s=0.3)
    catalog = Catalog(broker)
    signature(catalog, "a")
    monkeypatch.setattr(catalog_module, "CATALOG_TTL_S", 0.0)
    with ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda _: (signature(catalog, "a"), time.monotonic()),
                                range(16)))
    assert all(signature is not None for signature, _ in answers)
    assert broker.calls == 2  # the first fetch, then exactly one refresh
    waited = sorted(t - started for _, t in answers)
    assert waited[-2] < 0.2  # only the refreshing thread waited for the broker


def test_a_burst_for_an_unknown_model_shares_fetches_instead_of_one_per_thread():
    broker = CountingBroker(delay_s=0.05)
    catalog = Catalog(broker)
    signature(catalog, "a")
    time.sleep(0.15)  # older than UNKNOWN_MODEL_FRESH_S: an unknown name re-checks
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: signature(catalog, "nope"), range(16)))
    assert answers == [None] * 16
    assert broker.calls <= 3, broker.calls  # the first fetch, then one or two shared ones


def test_an_unknown_model_forces_a_refresh_so_a_new_registration_is_found():
    broker = CountingBroker()
    catalog = Catalog(broker)
    assert signature(catalog, "b") is None
    time.sleep(0.15)
    broker.models["b"] = model("b")
    assert signature(catalog, "b") is not None
