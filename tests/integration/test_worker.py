"""A real worker process, driven over the real wire protocol by a broker stand-in."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from mxserve.common.errors import EXIT_MODEL_LOAD, EXIT_OK
from mxserve.common.protocol import Kind
from mxserve.common.signature import TensorSpec
from mxserve.frontend.decode import Limits, decode_image
from tests.worker_harness import BrokerStub


@pytest.fixture
def broker(tmp_path):
    stub = BrokerStub(tmp_path)
    yield stub
    stub.close()


def decode_digit(data: bytes):
    """What the frontend sends the worker for a 32x32 RGB input."""
    return decode_image(data, TensorSpec("data", (1, 3, 32, 32)), Limits())


def results(reply):
    for item in reply.items:
        assert "error" not in item.fields, item.fields
    return [answer(item) for item in reply.items]


def answer(item):
    """A worker's answer travels as JSON bytes in a frame of its own."""
    return json.loads(item.arrays["answer"]) if "answer" in item.arrays else None


def test_reference_archive_from_mms04_exporter_matches_recorded_answers(broker, reference):
    broker.start_worker(reference / "digits.model")
    identity, ready = broker.wait_ready()
    assert ready.fields["model"] == "digits" and ready.fields["device"] == "cpu"
    for digit in range(10):
        image = decode_digit((reference / "images" / f"digit_{digit}.jpg").read_bytes())
        [answer] = results(broker.infer(identity, [{"data": image}]))
        recorded = json.loads((reference / f"digits_predict_digit_{digit}.json").read_text())
        expected = recorded["prediction"]
        assert len(answer) == len(expected) == 1
        assert [p["class"] for p in answer[0]][0] == expected[0][0]["class"]
        assert [p["class"] for p in answer[0]] == [p["class"] for p in expected[0]]
        for got, want in zip(answer[0], expected[0]):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-3)


def in_process_predictions(archive_src: Path, images: np.ndarray) -> np.ndarray:
    """A plain gluon forward of the exported files: the answer the worker must reproduce."""
    net = mx.gluon.SymbolBlock.imports(str(archive_src / "digits-symbol.json"), ["data"],
                                       str(archive_src / "digits-0000.params"))
    chw = images.transpose(0, 3, 1, 2).astype(np.float32)
    return net(mx.nd.array(chw)).asnumpy()


@pytest.mark.parametrize("batch_size", [1, 3, 8, 32])
def test_heldout_digits_in_batches_equal_in_process_forward(broker, sample_models, batch_size):
    heldout = sample_models["digits"].parent / "digits_heldout"
    labels = json.loads((heldout / "labels.json").read_text())
    names = sorted(labels)
    images = np.stack([decode_digit((heldout / n).read_bytes()) for n in names])
    expected = in_process_predictions(sample_models["digits"].parent / "src" / "digits", images)

    broker.start_worker(sample_models["digits"], max_batch_size=batch_size)
    identity, _ = broker.wait_ready()
    served = []
    for start in range(0, len(names), batch_size):
        reply = broker.infer(identity, [{"data": img} for img in images[start:start + batch_size]])
        assert reply.fields["batch_size"] == len(reply.items)
        served += results(reply)
    top1 = np.array([int(answer[0][0]["class"]) for answer in served])
    assert (top1 == expected.argmax(1)).all()
    top_prob = np.array([answer[0][0]["probability"] for answer in served])
    np.testing.assert_allclose(top_prob, expected.max(1), rtol=1e-5, atol=1e-6)
    accuracy = float((top1 == np.array([labels[n] for n in names])).mean())
    print(f"batch {batch_size}: served accuracy {accuracy:.4f} on {len(names)} held-out images")
    assert accuracy >= 0.95


def test_json_tensor_model_answers_output_tensors(broker, sample_models):
    broker.start_worker(sample_models["digits_mlp"])
    identity, _ = broker.wait_ready()
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data[:5].astype(np.float32)
    one, two = results(broker.infer(identity, [{"data": x[:1]}, {"data": x[1:5]}]))
    assert np.array(one).shape == (1, 1, 10)  # [per output][rows][classes], as 0.4
    assert np.array(two).shape == (1, 4, 10)
    predicted = np.array(one[0] + two[0]).argmax(1)
    assert (predicted == digits.target[:5]).mean() >= 0.8
    np.testing.assert_allclose(np.array(one[0] + two[0]).sum(1), 1.0, rtol=1e-5)


def test_wrong_shape_and_expired_requests_fail_alone(broker, sample_models):
    broker.start_worker(sample_models["digits"])
    identity, _ = broker.wait_ready()
    good = np.zeros((32, 32, 3), np.uint8)
    reply = broker.infer(identity, [{"data": good}, {"data": np.zeros((8, 8, 3), np.uint8)},
                                    {"image": good}])
    assert answer(reply.items[0]) is not None
    assert reply.items[1].fields["error"]["type"] == "InvalidInput"
    assert "[32, 32, 3]" in reply.items[1].fields["error"]["message"]
    assert reply.items[2].fields["error"]["type"] == "InvalidInput"
    expired = broker.infer(identity, [{"data": good}], budget_ms=0)
    assert expired.items[0].fields["error"]["type"] == "DeadlineExceeded"


def test_custom_service_written_the_mms04_way(broker, sample_models, tmp_path):
    """tests/data/custom_vision_service.py imports mms.* and overrides pre/post-process."""
    from mxserve.instance.export import export_model
    from tests.conftest import DATA

    archive = export_model("digits_custom", sample_models["digits"].parent / "src" / "digits",
                           service_file_path=DATA / "custom_vision_service.py",
                           export_path=tmp_path)
    broker.start_worker(archive, max_batch_size=4)
    identity, _ = broker.wait_ready()
    heldout = sample_models["digits"].parent / "digits_heldout"
    names = sorted(json.loads((heldout / "labels.json").read_text()))[:4]
    images = [decode_digit((heldout / n).read_bytes()) for n in names]
    blank = np.zeros((32, 32, 3), np.uint8)  # the custom service refuses blank images
    reply = broker.infer(identity, [{"data": images[0]}, {"data": blank},
                                    {"data": images[1]}, {"data": images[2]}])
    answers = [answer(item) for item in reply.items]
    error = reply.items[1].fields["error"]
    assert error["type"] == "ModelError" and "blank image" in error["message"]
    assert "Traceback" not in error["message"]
    served = [answers[0], answers[2], answers[3]]
    assert all(set(answer) == {"digit", "confident"} for answer in served)
    truth = [n.split("_")[1][0] for n in names[:3]]  # file names are <index>_<label>.jpg
    assert sum(a["digit"] == t for a, t in zip(served, truth)) >= 2
    # After the failure the worker still serves.
    assert answer(broker.infer(identity, [{"data": images[3]}]).items[0]) is not None


def test_bad_archive_exits_with_model_load_code(broker, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a zip")
    process = broker.start_worker(bad)
    assert process.wait(timeout=60) == EXIT_MODEL_LOAD
    assert b"not a valid zip archive" in process.stderr.read()


def test_sigterm_exits_cleanly_with_disconnect_and_heartbeats(broker, sample_models):
    process = broker.start_worker(sample_models["digits"])
    identity, _ = broker.wait_ready()
    _, heartbeat = broker.receive(timeout_s=5, skip_heartbeats=False)
    assert heartbeat.kind == Kind.HEARTBEAT
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == EXIT_OK
    _, goodbye = broker.receive(timeout_s=5)
    assert goodbye.kind == Kind.DISCONNECT


POOL_CPU_ENV = {"MXNET_ENGINE_TYPE": "NaiveEngine", "MXNET_SUBGRAPH_BACKEND": "NONE"}


def os_threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def test_a_batch_lent_idle_cores_runs_on_more_threads_and_answers_the_same(
        broker, sample_models, tmp_path):
    """`threads: N` from the broker (every other CPU worker idle): a worker whose share is
    one thread runs that batch on an N-wide OpenMP thread (worker/lent_cores.py). With the
    naive engine and no MKLDNN subgraphs, as the pool starts CPU workers."""
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        process = broker.start_worker(sample_models["resnet18"], max_batch_size=2,
                                      stderr=stderr, **POOL_CPU_ENV)
    identity, ready = broker.wait_ready()
    assert ready.fields["threads"] == 1
    # Created and warmed before READY (the most it can be lent is every core): the first
    # lent batch neither starts a thread nor builds primitives.
    cores = os.cpu_count() or 1
    assert f"running batches on {cores} OpenMP threads" in log.read_text()
    photo = (sample_models["resnet18"].parent / "examples" / "china.jpg").read_bytes()
    image = decode_image(photo, TensorSpec("data", (1, 3, 224, 224)), Limits())
    threads_at_ready = os_threads(process.pid)
    [own] = results(broker.infer(identity, [{"data": image}]))
    for _ in range(3):
        [lent] = results(broker.infer(identity, [{"data": image}], threads=cores))
        assert [c["class"] for c in lent[0]] == [c["class"] for c in own[0]]
        np.testing.assert_allclose([c["probability"] for c in lent[0]],
                                   [c["probability"] for c in own[0]], rtol=1e-4)
    assert os_threads(process.pid) == threads_at_ready


@pytest.mark.parametrize("engine, subgraphs", [("ThreadedEngine", "NONE"),
                                               ("NaiveEngine", "MKLDNN")])
def test_lent_cores_are_declined_where_they_would_not_help_or_would_crash(
        broker, sample_models, engine, subgraphs):
    """The threaded engine runs operators on its own threads (a wider caller widens
    nothing); MKLDNN subgraph operators crash when a second thread runs them. The worker
    says it can use no lent cores, and runs every forward at home."""
    process = broker.start_worker(sample_models["digits"], MXNET_ENGINE_TYPE=engine,
                                  MXNET_SUBGRAPH_BACKEND=subgraphs)
    identity, ready = broker.wait_ready()
    assert ready.fields["threads"] == 0
    threads_before = os_threads(process.pid)
    image = decode_digit((sample_models["digits"].parent / "examples" / "digit_0.jpg")
                         .read_bytes())
    assert results(broker.infer(identity, [{"data": image}], threads=2))
    assert os_threads(process.pid) == threads_before
