"""The Open Inference Protocol (KServe v2) over REST, spoken by the real third-party client
(`tritonclient.http`) to the real stack: health, metadata, JSON and binary tensors equal to
/predict's answers, images as BYTES, the classification extension, and every error as a
4xx {"error": ...} after which the server still serves."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mxserve.common.images import decode_image
from mxserve.common.signature import TensorSpec
from tests.server_harness import ROOT, eventually


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=4) as c:
        yield c


def image(sample_models, name: str) -> bytes:
    return (sample_models["digits"].parent / "examples" / name).read_bytes()


def predict_json(server, model: str, rows: np.ndarray) -> np.ndarray:
    answer = requests.post(f"{server.url}/{model}/predict",
                           data={"data": json.dumps(rows.tolist())}, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["prediction"][0], dtype=np.float32)


def infer_rows(client, rows: np.ndarray, binary: bool, model: str = "digits_mlp"):
    tensor = triton.InferInput("data", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return client.infer(model, [tensor], request_id="row-1", outputs=[
        triton.InferRequestedOutput("softmax", binary_data=binary)])


def encoded(data: bytes) -> triton.InferInput:
    tensor = triton.InferInput("data", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
    return tensor


def top_classes(client, model: str, data: bytes, count: int) -> list[str]:
    answer = client.infer(model, [encoded(data)], outputs=[
        triton.InferRequestedOutput("softmax", binary_data=True, class_count=count)])
    return [s.decode() for s in answer.as_numpy("softmax")[0]]


def test_health_and_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("resnet18")
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mxserve"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])
    model = client.get_model_metadata("resnet18")
    assert model["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert model["outputs"][0]["shape"] == [-1, 1000]
    missing = requests.get(f"{server.url}/v2/models/nope", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tensors_are_answered_as_predict_answers_them(client, server, binary):
    rows = np.random.default_rng(7).random((3, 64), dtype=np.float32) * 16
    answer = infer_rows(client, rows, binary)
    assert answer.get_response()["id"] == "row-1"
    got = answer.as_numpy("softmax")
    assert got.shape == (3, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, predict_json(server, "digits_mlp", rows), atol=1e-5)


def test_a_digit_sent_as_bytes_is_its_own_class(client, sample_models, reference):
    assert top_classes(client, "digits", image(sample_models, "digit_0.jpg"), 1)[0].endswith(
        ":0:0")
    for digit in range(10):
        photo = (reference / "images" / f"digit_{digit}.jpg").read_bytes()
        [best] = top_classes(client, "mms04_digits", photo, 1)
        score, index, label = best.split(":")
        assert index == label == str(digit) and 0 < float(score) <= 1


def test_resnet18_top5_names_the_labels_predict_names(client, server, sample_models):
    photo = image(sample_models, "china.jpg")
    classes = top_classes(client, "resnet18", photo, 5)
    predicted = requests.post(f"{server.url}/resnet18/predict", files={"data": photo},
                              timeout=60).json()["prediction"][0]
    assert [c.split(":", 2)[2] for c in classes] == [p["class"] for p in predicted]
    for text, shown in zip(classes, predicted):
        assert float(text.split(":")[0]) == pytest.approx(shown["probability"], abs=1e-5)


def test_a_tensor_in_the_models_layout_skips_decoding_and_answers_the_same(client,
                                                                           sample_models):
    photo = image(sample_models, "digit_0.jpg")
    pixels = decode_image(photo, TensorSpec("data", (0, 3, 32, 32)), 16_000_000, False)
    layout = pixels.transpose(2, 0, 1)[np.newaxis]  # H x W x C -> 1 x C x H x W
    outputs = []
    for datatype, array in (("UINT8", layout), ("FP32", layout.astype(np.float32))):
        tensor = triton.InferInput("data", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        outputs.append(client.infer("digits", [tensor]).as_numpy("softmax"))
    from_bytes = client.infer("digits", [encoded(photo)]).as_numpy("softmax")
    np.testing.assert_allclose(outputs[0], from_bytes, atol=1e-6)
    np.testing.assert_allclose(outputs[1], from_bytes, atol=1e-6)


def raw_infer(server, model: str, body: bytes, headers=None) -> requests.Response:
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=body,
                         headers=headers or {}, timeout=30)


def row_input(**changes) -> dict:
    tensor = {"name": "data", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    tensor.update(changes)
    return tensor


@pytest.mark.parametrize("model, body, status, words", [
    ("digits_mlp", {"inputs": [row_input(name="pixels")]}, 400, "takes inputs"),
    ("digits_mlp", {"inputs": [row_input(datatype="INT32", data=[1] * 64)]}, 400, "FP32"),
    ("digits_mlp", {"inputs": [row_input(shape=[1, 63], data=[0.5] * 63)]}, 400, "shape"),
    ("digits_mlp", {"inputs": [row_input(shape=[1, 64], data=[0.5] * 10)]}, 400, "elements"),
    ("digits_mlp", {"inputs": [row_input()], "outputs": [{"name": "logits"}]}, 400,
     "unknown output"),
    ("digits", {"inputs": [{"name": "data", "datatype": "INT64", "shape": [1, 3, 32, 32],
                            "data": [0] * 3072}]}, 400, "BYTES"),
    ("digits", {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                            "data": ["not an image"]}]}, 415, "JPEG or PNG"),
    ("nope", {"inputs": [row_input()]}, 404, "not loaded"),
    # absurd dimensions: counted with integers and refused, never a 500
    ("digits_mlp", {"inputs": [row_input(shape=[0, 2 ** 62], data=[])]}, 413, "dimension"),
    ("digits_mlp", {"inputs": [row_input(shape=[0, int("9" * 4000)], data=[])]}, 413,
     "dimension"),
    ("digits_mlp", {"inputs": [row_input(shape=[0, 1e20], data=[])]}, 400, "integers"),
])
def test_every_client_mistake_is_a_4xx_error_object(server, model, body, status, words):
    answer = raw_infer(server, model, json.dumps(body).encode())
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json()) == {"error"} and words in answer.json()["error"]


def test_malformed_bodies_and_a_binary_header_longer_than_the_body_are_400(server):
    for body, headers in ((b"{not json", {}), (b"[]", {}), (b"", {}),
                          (json.dumps({"inputs": [row_input()]}).encode(),
                           {"Inference-Header-Content-Length": "100000"}),
                          (b'{"inputs": []}', {"Inference-Header-Content-Length": "-1"})):
        answer = raw_infer(server, "digits_mlp", body, headers)
        assert answer.status_code == 400, (body, answer.text)
        assert list(answer.json()) == ["error"]
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


def test_unknown_v2_paths_and_methods_answer_in_the_protocols_shape(server):
    assert requests.get(f"{server.url}/v2/models/digits/infer", timeout=10).status_code == 405
    unknown = requests.get(f"{server.url}/v2/nothing/here", timeout=10)
    assert unknown.status_code == 404 and list(unknown.json()) == ["error"]


def test_no_content_type_is_needed(server):
    body = json.dumps({"inputs": [row_input()]}).encode()
    prepared = requests.Request("POST", f"{server.url}/v2/models/digits_mlp/infer",
                                data=body).prepare()
    prepared.headers.pop("Content-Type", None)
    answer = requests.Session().send(prepared, timeout=30)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]
    assert re.search(r"batch;desc=\d+", answer.headers["Server-Timing"])


def test_32_concurrent_v2_and_predict_requests_each_get_their_own_answer(server, reference):
    rows = np.random.default_rng(11).random((32, 64), dtype=np.float32) * 16
    expected = predict_json(server, "digits_mlp", rows)
    photos = [(reference / "images" / f"digit_{d}.jpg").read_bytes() for d in range(10)]
    own = threading.local()  # tritonclient.http runs on gevent: one client per thread

    def ask(i: int):
        if not hasattr(own, "client"):
            own.client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        row = rows[i:i + 1]
        if i % 3 == 0:
            return infer_rows(own.client, row, binary=True).as_numpy("softmax")[0]
        if i % 3 == 1:
            return predict_json(server, "digits_mlp", row)[0]
        [best] = top_classes(own.client, "mms04_digits", photos[i % 10], 1)
        return best

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    for i, got in enumerate(results):
        if i % 3 == 2:
            assert got.split(":")[1] == str(i % 10), (i, got)
        else:
            np.testing.assert_allclose(got, expected[i], atol=1e-5)


def test_the_client_raises_the_servers_message(client):
    with pytest.raises(InferenceServerException) as refused:
        infer_rows(client, np.zeros((1, 63), np.float32), binary=True)
    assert refused.value.status() == "400" and "shape" in refused.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "404"


def doc_block(language: str, after: str) -> str:
    text = (ROOT / "docs" / "protocols.md").read_text()
    return re.search(rf"```{language}\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_the_docs_tritonclient_rest_example_runs(server):
    code = doc_block("python", "### With tritonclient (REST)").replace(
        "127.0.0.1:8080", f"127.0.0.1:{server.port}")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ready, best, shape = done.stdout.splitlines()
    assert ready.startswith("True") and "'shape': [-1, 3, 32, 32]" in ready
    assert best.split(":")[1:] == ["0", "0"] and shape == "(2, 10)"


def test_the_docs_curl_example_runs(server):
    command = doc_block("sh", "The same with curl").replace("127.0.0.1:8080",
                                                            f"127.0.0.1:{server.port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    answer = json.loads(done.stdout)
    [best] = answer["outputs"][0]["data"]
    assert best.split(":")[1] == "0", answer


def test_v2_requests_are_counted_and_logged_by_protocol(client, server):
    from prometheus_client.parser import text_string_to_metric_families

    rows = np.ones((1, 64), np.float32)
    infer_rows(client, rows, binary=True)
    with pytest.raises(InferenceServerException):
        infer_rows(client, np.ones((1, 3), np.float32), binary=True)
    scrape = requests.get(f"{server.admin}/metrics", headers=server.admin_headers, timeout=10)
    counts = {tuple(sorted(s.labels.items())): s.value
              for family in text_string_to_metric_families(scrape.text)
              for s in family.samples if s.name == "mxserve_predictions_total"}
    labels = (("model", "digits_mlp"), ("protocol", "v2-rest"))
    assert counts[(*labels[:1], labels[1], ("status_class", "2xx"))] >= 1
    assert counts[(*labels[:1], labels[1], ("status_class", "4xx"))] >= 1
    lines = eventually(lambda: [line for line in server.log_text().splitlines()
                                if "path=/v2/models/digits_mlp/infer protocol=v2-rest" in line],
                       10, "a v2 access-log line")
    assert any("status=200" in line and "batch=" in line for line in lines)
