"""Wire protocol: round trips and strict refusal of malformed frames."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from mxserve.common.errors import ProtocolError
from mxserve.common.protocol import TAG, Item, Kind, Message, from_frames, to_frames


def roundtrip(message: Message) -> Message:
    return from_frames([bytes(f) for f in to_frames(message)])


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "float32", "float64",
                                   "bool"])
def test_arrays_roundtrip_with_dtype_and_shape(dtype):
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    out = roundtrip(Message(Kind.REQUEST, {"model": "m"}, [Item("a", {"budget_ms": 5.0},
                                                                 {"x": array})]))
    assert out.kind == Kind.REQUEST and out.fields == {"model": "m"}
    got = out.items[0].arrays["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_batch_of_items_keeps_order_names_and_fields():
    items = [Item(f"id{i}", {"budget_ms": i}, {"a": np.full((2,), i, np.float32),
                                               "b": np.zeros((0, 3), np.int8)})
             for i in range(5)]
    out = roundtrip(Message(Kind.REQUEST, {}, items))
    assert [i.id for i in out.items] == [f"id{i}" for i in range(5)]
    for i, item in enumerate(out.items):
        assert item.fields == {"budget_ms": i}
        assert list(item.arrays) == ["a", "b"]
        np.testing.assert_array_equal(item.arrays["a"], [i, i])
        assert item.arrays["b"].shape == (0, 3)


def test_non_contiguous_and_big_endian_arrays_are_sent_correctly():
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    big = np.arange(6, dtype=">i4")
    out = roundtrip(Message(Kind.REPLY, {}, [Item("x", {}, {"s": strided, "b": big})]))
    np.testing.assert_array_equal(out.items[0].arrays["s"], strided)
    np.testing.assert_array_equal(out.items[0].arrays["b"], big)


def test_large_arrays_are_zero_copy_both_ways():
    array = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    frames = to_frames(Message(Kind.REQUEST, {}, [Item("x", {}, {"x": array})]))
    assert isinstance(frames[2], memoryview) and np.shares_memory(np.asarray(frames[2]), array)
    received = from_frames(frames)
    assert np.shares_memory(received.items[0].arrays["x"], np.asarray(frames[2]))


def test_over_real_zmq_sockets_with_frames_not_copied():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        a.bind("inproc://t")
        b.connect("inproc://t")
        array = np.arange(100_000, dtype=np.float32)
        a.send_multipart(to_frames(Message(Kind.REQUEST, {}, [Item("x", {}, {"x": array})])),
                         copy=False)
        out = from_frames(b.recv_multipart(copy=False))
        np.testing.assert_array_equal(out.items[0].arrays["x"], array)
    finally:
        a.close(0), b.close(0), context.term()


def test_object_arrays_are_refused_on_send():
    with pytest.raises(ProtocolError, match="cannot cross the wire"):
        to_frames(Message(Kind.REQUEST, {}, [Item("x", {}, {"x": np.array([object()])})]))


def header(**overrides):
    base = {"k": 3, "f": {}, "i": [{"id": "a", "f": {}, "a": [["x", "<f4", [2]]]}]}
    base.update(overrides)
    return msgpack.packb(base)


GOOD_ARRAY = np.zeros(2, np.float32).tobytes()


@pytest.mark.parametrize("frames, match", [
    ([TAG], "at least 2"),
    ([b"HTTP", header(), GOOD_ARRAY], "unknown protocol tag"),
    ([b"MXS\x02", header(), GOOD_ARRAY], "unknown protocol tag"),
    ([TAG, b"\xc1\xc1", GOOD_ARRAY], "not valid msgpack"),
    ([TAG, msgpack.packb([1, 2]), GOOD_ARRAY], "not a map"),
    ([TAG, header(k=99), GOOD_ARRAY], "unknown message kind"),
    ([TAG, header(k="3"), GOOD_ARRAY], "unknown message kind"),
    ([TAG, header(f=[1]), GOOD_ARRAY], "fields is not a map"),
    ([TAG, header(i="nope"), GOOD_ARRAY], "items is not a list"),
    ([TAG, header(i=[{"id": "", "a": []}])], "item id"),
    ([TAG, header(i=[{"id": "x" * 500, "a": []}])], "item id"),
    ([TAG, header(i=[{"id": 5, "a": []}])], "item id"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "|O", [2]]]}]), GOOD_ARRAY], "not allowed"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<U4", [2]]]}]), GOOD_ARRAY], "not allowed"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4", [3]]]}]), GOOD_ARRAY], "needs 12 bytes"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4", [-2]]]}]), GOOD_ARRAY], "bad shape"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4", [True, 2]]]}]), GOOD_ARRAY], "bad shape"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4", [1] * 9]]}]), b"\0" * 4], "bad shape"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4"]]}]), GOOD_ARRAY], "descriptor"),
    ([TAG, header()], "more arrays than there are frames"),
    ([TAG, header(), GOOD_ARRAY, GOOD_ARRAY], "not described"),
    ([TAG, header(i=[{"id": "a", "a": [["x", "<f4", [2]], ["x", "<f4", [2]]]}]),
      GOOD_ARRAY, GOOD_ARRAY], "duplicate array name"),
    ([TAG, b"\x00" * (1024 * 1024 + 1)], "over the limit"),
])
def test_malformed_messages_raise_protocol_error(frames, match):
    with pytest.raises(ProtocolError, match=match):
        from_frames(frames)


def test_deeply_nested_header_is_refused_not_crashing():
    # 100,000 nested one-element arrays: msgpack's stack limit, not Python recursion, stops it.
    with pytest.raises(ProtocolError):
        from_frames([TAG, b"\x91" * 100_000])


def test_each_kinds_fields_are_read_with_their_declared_types():
    from mxserve.common.protocol import Ready, RequestItem, fields_of, read_fields

    ready = Ready(model="m", device="cpu", pid=7, max_batch_size=8, threads=1)
    assert read_fields(Ready, fields_of(ready)) == ready
    assert read_fields(RequestItem, {"budget_ms": 5}).budget_ms == 5  # an int is a float
    assert read_fields(Ready, {"model": "m", "unknown": object()}).device == "?"
    assert read_fields(RequestItem, {"budget_ms": 1.5, "outputs": {"x": 1}}).outputs == {"x": 1}
    for bad in ({"model": 3}, {"model": None}, {"model": "m", "pid": True},
                {"model": "m", "pid": 1.5}, {}):
        with pytest.raises(ProtocolError):
            read_fields(Ready, bad)
    for bad in ({"budget_ms": "x"}, {"budget_ms": True}, {"budget_ms": [1]},
                {"encoded_images": 1}):
        with pytest.raises(ProtocolError):
            read_fields(RequestItem, bad)


def test_errors_cross_per_item_and_keep_their_type():
    from mxserve.common.errors import ServiceUnavailable
    from mxserve.common.protocol import error_item, item_error

    item = from_frames(to_frames(Message(Kind.REPLY, {}, [
        error_item("r1", ServiceUnavailable("busy", retry_after_s=5))]))).items[0]
    error = item_error(item)
    assert isinstance(error, ServiceUnavailable) and error.retry_after_s == 5
    assert item_error(Item("r2")) is None
