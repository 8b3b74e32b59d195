"""A frontend process's view of which models exist and their signatures.

Asked of the broker and cached briefly, so routing a predict request costs no round trip;
an unknown model name forces one refresh before the answer is 404, so a model registered
a moment ago is found. When the cache expires under load, one thread refreshes it and the
others keep routing with the previous snapshot instead of all asking the broker at once.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from common.signature import Signature, parse_signature
from frontend.broker_client import BrokerClient

CATALOG_TTL_S = 2.0
CATALOG_TIMEOUT_S = 1.0  # /ping must answer within a second even when the broker is gone


@dataclass(frozen=True)
class Snapshot:
    raw: dict[str, Any]
    signatures: dict[str, Signature]
    fetched: float


class Catalog:
    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def fetch(self) -> Snapshot:
        """Ask the broker now (raises ServiceUnavailable/DeadlineExceeded if it is gone)."""
        raw = self.client.catalog(CATALOG_TIMEOUT_S)
        signatures = {name: parse_signature(model["signature"])
                      for name, model in raw["models"].items() if model.get("signature")}
        snapshot = Snapshot(raw, signatures, time.monotonic())
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def current(self) -> Snapshot:
        """A snapshot at most CATALOG_TTL_S old, or the previous one while another thread
        is fetching its successor."""
        snapshot = self._snapshot
        if snapshot is None:
            return self.fetch()
        if time.monotonic() - snapshot.fetched <= CATALOG_TTL_S:
            return snapshot
        if not self._refreshing.acquire(blocking=False):
            return snapshot
        try:
            return self.fetch()
        finally:
            self._refreshing.release()

    def signature(self, model: str) -> Signature | None:
        snapshot = self.current()
        if model not in snapshot.signatures and time.monotonic() - snapshot.fetched > 0.1:
            snapshot = self.fetch()
        return snapshot.signatures.get(model)

    def signatures(self) -> dict[str, Signature]:
        return self.current().signatures
