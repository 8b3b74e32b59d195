"""/livez and /readyz decisions: liveness survives a broker restart, readiness waits only for
the required models."""
from __future__ import annotations

from mxserve.common.errors import ServiceUnavailable
from mxserve.frontend.catalog import Snapshot
from mxserve.frontend.probes import BrokerLiveness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gone() -> Snapshot:
    raise ServiceUnavailable("the broker is not answering")


def test_liveness_holds_through_a_broker_restart_and_fails_past_the_grace_period():
    clock = Clock()
    liveness = BrokerLiveness(30.0, clock)
    assert liveness.check(lambda: None) == (True, "")
    clock.now += 20
    assert liveness.check(gone)[0] is True  # restarting: seconds, not a reason to restart
    clock.now += 11
    live, reason = liveness.check(gone)
    assert live is False and "31.0s" in reason and "not answering" in reason
    assert liveness.check(lambda: None) == (True, "")  # back: live again at once
    clock.now += 29
    assert liveness.check(gone)[0] is True


def snapshot(models: dict, draining: bool = False, missing: tuple = ()) -> Snapshot:
    return Snapshot({"models": models, "draining": draining,
                     "required_missing": list(missing)}, {}, 0.0)


def model(ready: int, required: bool, status: str = "ready") -> dict:
    return {"ready": ready, "required": required, "status": status}


def test_readiness_waits_for_required_models_only():
    assert snapshot({"a": model(1, True), "b": model(0, False, "failed")}).serving
    waiting = snapshot({"a": model(0, True, "loading"), "b": model(1, False)})
    assert not waiting.serving and waiting.waiting_for() == {"a": "loading"}
    assert not snapshot({"a": model(1, True)}, draining=True).serving
    missing = snapshot({"a": model(1, True)}, missing=("typo",))
    assert not missing.serving and missing.waiting_for() == {"typo": "not registered"}
    assert snapshot({}).serving  # nothing required, nothing to wait for
