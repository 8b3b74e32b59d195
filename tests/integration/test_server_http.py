"""The real multi-process stack over HTTP: answers, MMS 0.4 compatibility, errors."""
from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest
import requests
import sklearn
from openapi_spec_validator import validate

from tests.server_harness import eventually

PHOTOS = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")


def predict(server, model, files=None, data=None, timeout=60):
    return requests.post(f"{server.url}/{model}/predict", files=files, data=data,
                         timeout=timeout)


def assert_error(response, status, error_type, *words):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == status and body["type"] == error_type
    assert body["request_id"] == response.headers["X-Request-Id"]
    for word in words:
        assert word in body["message"], body["message"]
    assert "Traceback" not in response.text and "/work/" not in response.text
    return body


def test_heldout_digits_over_http_equal_in_process_predictions(server, sample_models):
    heldout = sample_models["digits"].parent / "digits_heldout"
    labels = json.loads((heldout / "labels.json").read_text())
    names = sorted(labels)
    src = sample_models["digits"].parent / "src" / "digits"
    net = mx.gluon.SymbolBlock.imports(str(src / "digits-symbol.json"), ["data"],
                                       str(src / "digits-0000.params"))
    import cv2

    images = [cv2.imdecode(np.frombuffer((heldout / n).read_bytes(), np.uint8),
                           cv2.IMREAD_COLOR)[:, :, ::-1] for n in names]
    chw = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
    in_process = net(mx.nd.array(chw)).asnumpy().argmax(1)

    def served(name):
        response = predict(server, "digits", files={"data": (heldout / name).read_bytes()})
        assert response.status_code == 200, response.text
        return int(response.json()["prediction"][0][0]["class"])

    with ThreadPoolExecutor(8) as pool:
        over_http = np.array(list(pool.map(served, names)))
    truth = np.array([labels[n] for n in names])
    assert (over_http == in_process).all()
    http_accuracy = (over_http == truth).mean()
    in_process_accuracy = (in_process == truth).mean()
    print(f"held-out accuracy: served {http_accuracy:.4f}, in-process "
          f"{in_process_accuracy:.4f} ({len(names)} images)")
    assert http_accuracy == in_process_accuracy >= 0.95


def test_mms04_reference_archive_answers_as_recorded(server, reference):
    for digit in range(10):
        image = (reference / "images" / f"digit_{digit}.jpg").read_bytes()
        response = predict(server, "mms04_digits", files={"data": image})
        assert response.status_code == 200
        got = response.json()["prediction"]
        want = json.loads((reference / f"digits_predict_digit_{digit}.json").read_text())
        want = want["prediction"]
        assert got[0][0]["class"] == want[0][0]["class"] == str(digit)
        assert [p["class"] for p in got[0]] == [p["class"] for p in want[0]]
        for g, w in zip(got[0], want[0]):
            assert g["probability"] == pytest.approx(w["probability"], abs=1e-3)
    tiny = predict(server, "mms04_digits",
                   files={"data": (reference / "images" / "tiny.jpg").read_bytes()})
    assert tiny.status_code == 200 and len(tiny.json()["prediction"][0]) == 5


def test_base64_form_field_works_as_0_4_intended(server, reference):
    image = (reference / "images" / "digit_7.jpg").read_bytes()
    response = predict(server, "mms04_digits", data={"data": base64.b64encode(image).decode()})
    assert response.status_code == 200, response.text
    assert response.json()["prediction"][0][0]["class"] == "7"


def test_health_and_description_keep_mms04_shapes(server, reference):
    for path, recording in (("/ping", "ping.json"), ("/", "root.json")):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 200
        assert response.json() == json.loads((reference / recording).read_text())
    response = requests.get(server.url + "/api-description", timeout=10)
    assert response.status_code == 200
    spec = response.json()["description"]
    validate(spec)
    assert spec["host"] == f"127.0.0.1:{server.port}"
    recorded = json.loads((reference / "api-description.json").read_text())["description"]
    assert spec["paths"]["/digits/predict"]["post"]["operationId"] == "digits_predict"
    assert spec["paths"]["/resnet18/predict"]["post"]["parameters"][0]["description"] == \
        recorded["paths"]["/resnet18/predict"]["post"]["parameters"][0]["description"]
    assert {"/", "/ping", "/api-description", "/digits/predict", "/resnet18/predict",
            "/digits_mlp/predict", "/mms04_digits/predict"} <= set(spec["paths"])


def test_64_concurrent_requests_on_two_models_each_get_their_own_answer(server, reference):
    """MMS 0.4's default layout returned other requests' answers under concurrency."""
    jobs = []
    for i in range(64):
        digit = (3, 8)[i % 2]
        if i % 4 < 2:
            jobs.append(("mms04_digits", (reference / "images" / f"digit_{digit}.jpg"),
                         str(digit)))
        else:
            jobs.append(("resnet18", os.path.join(PHOTOS, ("china.jpg", "flower.jpg")[i % 2]),
                         None))
    expected_resnet = {}
    for name in ("china.jpg", "flower.jpg"):
        with open(os.path.join(PHOTOS, name), "rb") as f:
            expected_resnet[name] = predict(server, "resnet18", files={"data": f.read()}).json()

    def run(job):
        model, path, digit = job
        with open(path, "rb") as f:
            response = predict(server, model, files={"data": f.read()})
        assert response.status_code == 200, response.text
        if digit is not None:
            return response.json()["prediction"][0][0]["class"] == digit
        got = response.json()["prediction"][0]
        want = expected_resnet[os.path.basename(path)]["prediction"][0]
        # Batched and single forwards may differ in the last float bits, never in classes.
        return [p["class"] for p in got] == [p["class"] for p in want] and all(
            g["probability"] == pytest.approx(w["probability"], rel=1e-4)
            for g, w in zip(got, want))

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(run, jobs))
    assert all(outcomes)
    assert expected_resnet["china.jpg"] != expected_resnet["flower.jpg"]


def test_json_tensor_model(server):
    from sklearn.datasets import load_digits

    digits = load_digits()
    response = predict(server, "digits_mlp",
                       data={"data": json.dumps(digits.data[:3].tolist())})
    assert response.status_code == 200, response.text
    rows = np.array(response.json()["prediction"][0])
    assert rows.shape == (3, 10)
    assert (rows.argmax(1) == digits.target[:3]).sum() >= 2


@pytest.mark.parametrize("case", ["unknown_model", "wrong_field", "not_an_image",
                                  "truncated_jpeg", "malformed_tensor", "wrong_shape_tensor",
                                  "no_body", "get_on_predict", "raw_jpeg_body"])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, reference, case):
    image = (reference / "images" / "digit_2.jpg").read_bytes()
    with open(os.path.join(PHOTOS, "china.jpg"), "rb") as f:
        truncated = f.read()[:20000]
    if case == "unknown_model":
        assert_error(predict(server, "nope", files={"data": image}), 404, "ModelNotFound",
                     "'nope'", "loaded models: digits, digits_mlp, mms04_digits, resnet18")
    elif case == "wrong_field":
        assert_error(predict(server, "digits", files={"image": image}), 400, "InvalidInput",
                     "'image'", "['data']")
    elif case == "not_an_image":
        assert_error(predict(server, "digits", files={"data": ("x.jpg", b"plain text",
                                                               "image/jpeg")}),
                     415, "UnsupportedMediaType", "not a JPEG or PNG")
    elif case == "truncated_jpeg":
        assert_error(predict(server, "resnet18", files={"data": truncated}), 400,
                     "InvalidInput", "could not be decoded")
    elif case == "malformed_tensor":
        assert_error(predict(server, "digits_mlp", data={"data": "[[1, 2,"}), 400,
                     "InvalidInput", "not valid JSON")
    elif case == "wrong_shape_tensor":
        assert_error(predict(server, "digits_mlp", data={"data": "[[1, 2, 3]]"}), 400,
                     "InvalidInput", "[0, 64]")
    elif case == "no_body":
        assert_error(predict(server, "digits"), 415, "UnsupportedMediaType", "multipart")
    elif case == "get_on_predict":
        assert_error(requests.get(f"{server.url}/digits/predict", timeout=10), 405,
                     "MethodNotAllowed")
    elif case == "raw_jpeg_body":
        response = requests.post(f"{server.url}/digits/predict", data=image,
                                 headers={"Content-Type": "image/jpeg"}, timeout=10)
        assert_error(response, 415, "UnsupportedMediaType", "multipart/form-data")
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    ok = predict(server, "mms04_digits", files={"data": image})
    assert ok.status_code == 200 and ok.json()["prediction"][0][0]["class"] == "2"


def test_oversized_body_is_a_json_413(server):
    response = predict(server, "digits", files={"data": b"\xff\xd8\xff" + b"\0" * 7_000_000})
    assert_error(response, 413, "PayloadTooLarge")


def test_one_access_log_line_per_request_with_its_id_and_timings_never_the_payload(server,
                                                                                     reference):
    image = (reference / "images" / "digit_6.jpg").read_bytes()
    response = requests.post(f"{server.url}/mms04_digits/predict", files={"data": image},
                             headers={"X-Request-Id": "trace-42 x"}, timeout=30)
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "trace-42 x"
    bad = requests.post(f"{server.url}/digits_mlp/predict", data={"data": "[[1, 2, 3]]"},
                        headers={"X-Request-Id": "trace-43"}, timeout=30)
    assert bad.status_code == 400

    def access_lines() -> list[str] | None:  # written after the answer is sent
        lines = [line for line in server.log_text().splitlines() if "access:" in line]
        return lines if any("request_id=trace-43 " in line for line in lines) else None

    lines = eventually(access_lines, 10, "access log line")
    [ok] = [line for line in lines if 'request_id="trace-42 x"' in line]
    assert ("method=POST path=/mms04_digits/predict protocol=predict model=mms04_digits "
            "status=200") in ok
    assert "batch=" in ok and "queue_ms=" in ok and "inference_ms=" in ok and "total_ms=" in ok
    assert "wire_id=" in ok
    [refused] = [line for line in lines if "request_id=trace-43 " in line]
    assert "status=400" in refused and "model=digits_mlp" in refused
    assert "[[1, 2, 3]]" not in server.log_text()  # payloads are never logged


def test_metrics_on_the_management_listener_add_up_across_processes(server, reference):
    from prometheus_client.parser import text_string_to_metric_families

    assert_error(requests.get(server.url + "/metrics", timeout=10), 404, "NotFound")
    image = (reference / "images" / "digit_1.jpg").read_bytes()
    for _ in range(4):  # over several connections: both frontend processes answer some
        assert predict(server, "mms04_digits", files={"data": image}).status_code == 200
    assert predict(server, "digits_mlp", data={"data": "[[1]]"}).status_code == 400
    response = requests.get(f"{server.admin}/metrics", headers=server.admin_headers,
                            timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(
        "text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    ok = samples[("mxserve_predictions_total", (("model", "mms04_digits"),
                                                ("protocol", "predict"),
                                                ("status_class", "2xx")))]
    assert ok >= 4
    assert samples[("mxserve_predictions_total", (("model", "digits_mlp"),
                                                  ("protocol", "predict"),
                                                  ("status_class", "4xx")))] >= 1
    assert samples[("mxserve_errors_total", (("type", "InvalidInput"),))] >= 1
    assert ("mxserve_errors_total", (("type", "DeadlineExceeded"),)) in samples  # all types
    # Recorded by the broker process, read by whichever frontend answered the scrape.
    assert samples[("mxserve_batch_size_count", (("model", "mms04_digits"),))] >= 4
    assert samples[("mxserve_workers_ready", (("model", "mms04_digits"),))] == 1
    assert samples[("mxserve_inference_seconds_count", (("model", "mms04_digits"),))] >= 4
    assert samples[("mxserve_host_memory_bytes", (("kind", "total"),))] > 0
    assert ("mxserve_host_cpu_seconds_total", (("mode", "idle"),)) in samples
