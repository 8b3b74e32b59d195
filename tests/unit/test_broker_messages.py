"""The broker never dies from a message: any well-framed message, with fields of any type,
from a frontend, a worker or the management socket is handled or refused. Property-tested
with hypothesis against a real Broker (its sockets bound in a private folder)."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxserve.common.config import load_config
from mxserve.common.errors import ProtocolError
from mxserve.common.protocol import Item, Kind, Message, from_frames, to_frames
from mxserve.worker.broker.loop import Broker

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)
KEYS = st.sampled_from(["model", "budget_ms", "pid", "threads", "max_batch_size", "device",
                        "inference_ms", "decode_ms", "load_error", "op", "name", "workers",
                        "folder", "max_batch_delay_ms", "reason", "error", "images"])
fields = st.dictionaries(KEYS, values, max_size=5)
items = st.builds(Item, id=st.text(min_size=1, max_size=8), fields=fields, arrays=st.just({}))
messages = st.builds(Message, kind=st.sampled_from(list(Kind)), fields=fields,
                     items=st.lists(items, max_size=3))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = load_config({"run_dir": str(run_dir)}, env={})
    broker = Broker(config, f"ipc://{run_dir}/f.sock", f"ipc://{run_dir}/w.sock",
                    f"ipc://{run_dir}/m.sock", run_dir)
    yield broker
    broker._shutdown()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, identity=st.binary(min_size=1, max_size=8))
def test_no_message_kills_the_broker(broker, message, identity):
    # What arrives has crossed the wire: encode and decode it as the socket would.
    try:
        received = from_frames(to_frames(message))
    except ProtocolError:
        return
    broker.on_frontend_message(identity, received)
    broker.on_worker_message(identity, received)
    for item in received.items:
        answer = broker.models.manage(dict(item.fields))
        assert set(answer) <= {"result", "error"}
    broker.scheduler.dispatch(0.0)
    broker.scheduler.expire(math.inf)
