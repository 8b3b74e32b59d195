"""The Open Inference Protocol (KServe v2) over gRPC, spoken by `tritonclient.grpc` to the
gRPC listener of the real stack: health, metadata, raw tensors equal to /predict's
answers, images as BYTES with classes, status codes for every mistake, and gRPC, REST and
/predict requests mixed under concurrency."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.server_harness import ROOT


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.grpc_address) as c:
        yield c


def predict_json(server, rows: np.ndarray) -> np.ndarray:
    answer = requests.post(f"{server.url}/digits_mlp/predict",
                           data={"data": json.dumps(rows.tolist())}, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["prediction"][0], dtype=np.float32)


def rows_input(rows: np.ndarray, module=triton):
    tensor = module.InferInput("data", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def top(client, model: str, photo: bytes, count: int, module=triton) -> list[str]:
    tensor = module.InferInput("data", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=object))
    answer = client.infer(model, [tensor], outputs=[
        module.InferRequestedOutput("softmax", class_count=count)])
    return [s.decode() for s in answer.as_numpy("softmax")[0]]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    with pytest.raises(InferenceServerException) as unknown:  # as REST's 404
        client.is_model_ready("nope")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    metadata = client.get_server_metadata()
    assert metadata.name == "mxserve" and "classification" in metadata.extensions
    model = client.get_model_metadata("digits_mlp")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("data", "FP32", [-1, 64])]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_raw_tensors_are_answered_as_predict_answers_them(client, server):
    rows = np.random.default_rng(5).random((4, 64), dtype=np.float32) * 16
    answer = client.infer("digits_mlp", [rows_input(rows)], request_id="g-1")
    assert answer.get_response().id == "g-1"
    assert answer.get_response().model_version == "1.0"  # an MMS 0.4 archive's version
    versioned = client.infer("digits_mlp", [rows_input(rows)], model_version="1.0")
    np.testing.assert_array_equal(versioned.as_numpy("softmax"), answer.as_numpy("softmax"))
    assert answer.get_response().raw_output_contents  # raw_output_contents, not contents
    channel = grpc.insecure_channel(server.grpc_address)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    request = triton.service_pb2.ModelInferRequest(model_name="digits_mlp")
    request.inputs.add(name="data", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(rows[:1].tobytes())
    _, call = infer.with_call(request.SerializeToString(), timeout=30)
    trailers = dict(call.trailing_metadata())
    assert re.search(r"inference;dur=[\d.]+.*batch;desc=\d+", trailers["server-timing"])
    channel.close()
    np.testing.assert_allclose(answer.as_numpy("softmax"), predict_json(server, rows),
                               atol=1e-5)


def test_a_digit_and_a_photo_as_bytes(client, server, reference, sample_models):
    for digit in (3, 8):
        photo = (reference / "images" / f"digit_{digit}.jpg").read_bytes()
        assert top(client, "mms04_digits", photo, 1)[0].split(":")[1:] == [str(digit)] * 2
    photo = (sample_models["resnet18"].parent / "examples" / "china.jpg").read_bytes()
    predicted = requests.post(f"{server.url}/resnet18/predict", files={"data": photo},
                              timeout=60).json()["prediction"][0]
    assert [c.split(":", 2)[2] for c in top(client, "resnet18", photo, 5)] == [
        p["class"] for p in predicted]


@pytest.mark.parametrize("mistake, code", [
    ("wrong name", "INVALID_ARGUMENT"), ("wrong datatype", "INVALID_ARGUMENT"),
    ("wrong shape", "INVALID_ARGUMENT"), ("short raw data", "INVALID_ARGUMENT"),
    ("unknown output", "INVALID_ARGUMENT"), ("unknown model", "NOT_FOUND"),
    ("unknown version", "NOT_FOUND")])
def test_every_mistake_is_a_client_status_code(client, mistake, code):
    rows = np.ones((1, 64), np.float32)
    name, datatype, model, outputs, version = "data", "FP32", "digits_mlp", None, ""
    if mistake == "wrong name":
        name = "pixels"
    elif mistake == "wrong datatype":
        datatype, rows = "FP64", rows.astype(np.float64)
    elif mistake == "wrong shape":
        rows = np.ones((1, 63), np.float32)
    elif mistake == "unknown output":
        outputs = [triton.InferRequestedOutput("logits")]
    elif mistake == "unknown model":
        model = "nope"
    elif mistake == "unknown version":
        version = "7.0"
    tensor = triton.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    if mistake == "short raw data":
        tensor.set_shape([2, 64])  # the bytes hold one row
    with pytest.raises(InferenceServerException) as refused:
        client.infer(model, [tensor], outputs=outputs, model_version=version)
    assert refused.value.status() == f"StatusCode.{code}", refused.value
    assert "Traceback" not in refused.value.message()
    assert client.is_server_ready()


def test_a_message_over_the_body_limit_is_refused(server):
    channel = grpc.insecure_channel(server.grpc_address)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as refused:
        infer(b"\x0a" + b"\xff" * 5 + b"\x7f" + b"x" * (9 * 1024 * 1024), timeout=30)
    assert refused.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError) as garbage:
        infer(b"\xff\xff\xff", timeout=30)  # not a protobuf message
    assert garbage.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    channel.close()


def test_32_concurrent_grpc_rest_and_predict_requests(server, reference):
    rows = np.random.default_rng(13).random((32, 64), dtype=np.float32) * 16
    expected = predict_json(server, rows)
    photos = [(reference / "images" / f"digit_{d}.jpg").read_bytes() for d in range(10)]
    shared = triton.InferenceServerClient(server.grpc_address)  # channels are thread-safe

    def ask(i: int):
        row = rows[i:i + 1]
        kind = i % 4
        if kind == 0:
            return shared.infer("digits_mlp", [rows_input(row)]).as_numpy("softmax")[0]
        if kind == 1:
            with triton_http.InferenceServerClient(f"127.0.0.1:{server.port}") as rest:
                return rest.infer("digits_mlp", [rows_input(row, triton_http)]).as_numpy(
                    "softmax")[0]
        if kind == 2:
            return predict_json(server, row)[0]
        return top(shared, "mms04_digits", photos[i % 10], 1)[0]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    shared.close()
    for i, got in enumerate(results):
        if i % 4 == 3:
            assert got.split(":")[1] == str(i % 10), (i, got)
        else:
            np.testing.assert_allclose(got, expected[i], atol=1e-5)


def test_the_docs_tritonclient_grpc_example_runs(server):
    text = (ROOT / "docs" / "protocols.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("### With tritonclient (gRPC)"):],
                     re.S).group(1).replace("127.0.0.1:8001", server.grpc_address)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ready, best, shape = done.stdout.splitlines()
    assert ready == "True" and best.split(":")[1:] == ["0", "0"] and shape == "(2, 10)"


def test_the_generated_stubs_are_those_of_the_committed_proto(tmp_path):
    """Regenerated with grpcio-tools, compared as text (importing them here would clash
    with tritonclient's own `inference` messages in this process)."""
    done = subprocess.run([sys.executable, "scripts/generate_grpc_stubs.py", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
        committed = (ROOT / "frontend" / "grpc_service" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"{name} is stale: regenerate it"


def test_typed_contents_are_checked_like_json_data(server):
    """Inputs as InferTensorContents instead of raw bytes (other v2 clients send these)."""
    channel = grpc.insecure_channel(server.grpc_address)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b,
                                response_deserializer=triton.service_pb2.ModelInferResponse
                                .FromString)
    rows = np.random.default_rng(17).random((2, 64), dtype=np.float32) * 16
    request = triton.service_pb2.ModelInferRequest(model_name="digits_mlp")
    tensor = request.inputs.add(name="data", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    answer = infer(request.SerializeToString(), timeout=30)
    got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 10)
    np.testing.assert_allclose(got, predict_json(server, rows), atol=1e-5)
    for datatype, field, values in (("FP32", "fp32_contents", [0.5] * 63),
                                    ("INT32", "int_contents", [1] * 64),
                                    ("UINT8", "uint_contents", [300] * 64)):
        bad = triton.service_pb2.ModelInferRequest(model_name="digits_mlp")
        tensor = bad.inputs.add(name="data", datatype=datatype, shape=[1, 64])
        getattr(tensor.contents, field).extend(values)
        with pytest.raises(grpc.RpcError) as refused:
            infer(bad.SerializeToString(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (datatype,
                                                                          refused.value)
    # a dimension no array can take, though the shape holds no element: refused, not INTERNAL
    absurd = triton.service_pb2.ModelInferRequest(model_name="digits_mlp")
    absurd.inputs.add(name="data", datatype="FP32", shape=[0, 2 ** 62])
    absurd.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as refused:
        infer(absurd.SerializeToString(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert "dimension" in refused.value.details()
    channel.close()


def test_a_killed_grpc_listener_is_restarted_and_serves_again(server):
    """Last in this file: the other tests here use the listener."""
    import os
    import signal

    from tests.server_harness import eventually

    [listener] = server.processes("grpc_listener")
    os.kill(listener, signal.SIGKILL)

    def serving_again() -> bool:
        with triton.InferenceServerClient(server.grpc_address) as fresh:
            try:
                return fresh.is_model_ready("digits")
            except InferenceServerException:
                return False

    eventually(serving_again, 30, "a restarted gRPC listener")
    [replacement] = server.processes("grpc_listener")
    assert replacement != listener
    assert "gRPC listener exited with code -9; restarting it" in server.log_text()
