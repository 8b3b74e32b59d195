"""A frontend process's view of which models exist and their signatures.

Asked of the broker and cached briefly, so routing a predict request costs no round trip;
an unknown model name forces one refresh before the answer is 404, so a model registered
a moment ago is found. One refresh at a time: when the cache expires under load, one
thread refreshes it and the others keep routing with the previous snapshot; a burst of
requests for an unknown model shares one fetch instead of each asking the broker.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from mxserve.common.errors import ModelNotFound
from mxserve.common.signature import Signature, parse_signature
from mxserve.frontend.broker_client import BrokerClient

CATALOG_TTL_S = 2.0
CATALOG_TIMEOUT_S = 1.0  # /ping must answer within a second even when the broker is gone
UNKNOWN_MODEL_FRESH_S = 0.1  # an unknown name is re-checked with a snapshot at most this old
MODELS_LISTED = 20  # a 404 names this many loaded models at most
NAME_ECHOED = 64  # and this much of the name asked for


@dataclass(frozen=True)
class Snapshot:
    raw: dict[str, Any]
    signatures: dict[str, Signature]  # MMS 0.4 models: tensors in, by their signature
    fetched: float  # when the broker was asked: the snapshot is at least this recent
    handlers: frozenset[str] = frozenset()  # MMS 1.x models: raw requests to handle()

    def knows(self, model: str) -> bool:
        return model in self.signatures or model in self.handlers

    @property
    def ready(self) -> bool:
        """Serving every model: not draining, and each has a ready worker."""
        models = self.raw["models"]
        return bool(models) and not self.raw["draining"] and all(
            m["ready"] >= 1 for m in models.values())

    @property
    def serving(self) -> bool:
        """Ready for traffic (/readyz): not draining, and every required model has a ready
        worker; a model registered later, or an optional one, never holds it back."""
        return not self.raw["draining"] and not self.raw.get("required_missing") and all(
            m["ready"] >= 1 for m in self.raw["models"].values() if m.get("required"))

    def waiting_for(self) -> dict[str, str]:
        """The required models without a ready worker, and their status."""
        waiting = {name: m["status"] for name, m in self.raw["models"].items()
                   if m.get("required") and m["ready"] < 1}
        return {**waiting, **{name: "not registered"
                              for name in self.raw.get("required_missing", [])}}

    def model_ready(self, model: str) -> bool:
        return self.raw["models"].get(model, {}).get("ready", 0) >= 1

    def key_of(self, model: str, version: str | None = None) -> str | None:
        """The broker's key for a model's version: its default version when None (the
        model's name, or name@version after the default moved to a later one)."""
        if version is None:
            return self.raw["defaults"].get(model)
        return next((key for key, entry in self.raw["models"].items()
                     if entry["model_name"] == model and entry["version"] == version), None)

    def versions(self, model: str) -> list[str]:
        return sorted(entry["version"] for entry in self.raw["models"].values()
                      if entry["model_name"] == model)


class Catalog:
    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def fetch(self) -> Snapshot:
        """Ask the broker now (raises ServiceUnavailable/DeadlineExceeded if it is gone)."""
        asked = time.monotonic()
        raw = self.client.catalog(CATALOG_TIMEOUT_S)
        signatures = {name: parse_signature(model["signature"])
                      for name, model in raw["models"].items() if model.get("signature")}
        handlers = frozenset(name for name, model in raw["models"].items()
                             if model.get("handler"))
        snapshot = Snapshot(raw, signatures, asked, handlers)
        with self._lock:
            if self._snapshot is None or asked >= self._snapshot.fetched:
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

    def _recent(self, since: float) -> Snapshot:
        """A snapshot that asked the broker at or after `since`: one fetched by another
        thread while this one waited its turn, or this thread's own."""
        with self._refreshing:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.fetched >= since:
                return snapshot
            return self.fetch()

    def served(self, model: str, version: str | None = None) -> tuple[Snapshot, str]:
        """The snapshot and the broker key that serve `model` (its default version, or
        `version`), refreshed first if the current snapshot has no such model; else 404."""
        snapshot = self.current()
        key = snapshot.key_of(model, version)
        if key is None:
            since = time.monotonic() - UNKNOWN_MODEL_FRESH_S
            if snapshot.fetched < since:
                snapshot = self._recent(since)
                key = snapshot.key_of(model, version)
        if key is not None and not snapshot.knows(key):
            key = None  # an archive that could not even be read: it was never served
        if key is None:
            known = snapshot.versions(model)
            if version is not None and known:
                raise ModelNotFound(f"model {model[:NAME_ECHOED]!r} has no version "
                                    f"{version[:NAME_ECHOED]!r}; its versions: "
                                    f"{', '.join(known)}")
            raise self.not_loaded(model)
        return snapshot, key

    def not_loaded(self, model: str) -> ModelNotFound:
        """The 404 for a model that is not loaded, naming the loaded ones."""
        snapshot = self.current()
        loaded = sorted(snapshot.raw["defaults"])
        listing = ", ".join(loaded[:MODELS_LISTED]) + (
            f" and {len(loaded) - MODELS_LISTED} more" if len(loaded) > MODELS_LISTED else "")
        return ModelNotFound(f"model {model[:NAME_ECHOED]!r} is not loaded; loaded "
                             f"models: {listing or 'none'} (see /api-description)")
