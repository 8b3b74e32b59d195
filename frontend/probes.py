"""The probes a kubelet and a load balancer can trust, beside MMS 0.4's /ping.

    GET /readyz   200 when this instance should get traffic: not draining, and every
                  required model (setting required_models; default, those given at start)
                  has a ready worker. A model registered later, or one not required,
                  never makes it unready. 503 with the models it waits for otherwise.
    GET /livez    200 unless this instance cannot recover by itself: its broker has not
                  been reachable for livez_broker_grace_s (a broker restart takes seconds,
                  and the launcher restarts it). A liveness probe on /ping would restart
                  pods whose only fault is a broken optional model.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from flask import Flask, Response, jsonify

from mxserve.common.errors import MXServeError
from mxserve.frontend.catalog import Catalog, Snapshot


class BrokerLiveness:
    """Whether this process's broker has been reachable within the grace period."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self.last_reached = clock()  # a process just started gets the whole grace period
        self._lock = threading.Lock()

    def check(self, fetch: Callable[[], Snapshot]) -> tuple[bool, str]:
        try:
            fetch()
        except MXServeError as exc:
            gone_s = self.clock() - self.last_reached
            return gone_s <= self.grace_s, (f"the broker has not been reachable for "
                                            f"{gone_s:.1f}s: {exc.message}")
        with self._lock:
            self.last_reached = self.clock()
        return True, ""


def add_probe_routes(app: Flask, catalog: Catalog, grace_s: float) -> None:
    liveness = BrokerLiveness(grace_s)

    @app.get("/livez")
    def livez() -> tuple[Response, int]:
        live, reason = liveness.check(catalog.fetch)
        body: dict[str, Any] = {"live": live}
        if reason:
            body["reason"] = reason
        return jsonify(body), 200 if live else 503

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            snapshot = catalog.fetch()
        except MXServeError as exc:
            return jsonify(ready=False, reason=f"broker: {exc.message}"), 503
        if snapshot.serving:
            return jsonify(ready=True), 200
        reason = "shutting down" if snapshot.raw["draining"] else "required models not ready"
        return jsonify(ready=False, reason=reason, waiting_for=snapshot.waiting_for()), 503
