"""MMS 1.x users move over unchanged: `.mar` archives made by the real `model-archiver`,
`handle(data, context)` services, and `POST /predictions/<model>`, on the same server as
MMS 0.4 archives and /<model>/predict."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.server_harness import eventually

IMAGES = ("digit_0.jpg", "china.jpg", "flower.jpg")


def image(sample_models, name: str) -> bytes:
    return (sample_models["digits"].parent / "examples" / name).read_bytes()


def same_answer(answer: list, expected: list) -> bool:
    """The same classes in the same order, probabilities equal to 5e-3: this service decodes
    with MXNet's OpenCV-based image utils as MMS 1.x's did, and the built-in 0.4 service
    with Pillow (and folds BatchNorms), which moves probabilities by up to ~1e-3."""
    return ([a["class"] for a in answer] == [e["class"] for e in expected]
            and all(abs(a["probability"] - e["probability"]) < 5e-3
                    for a, e in zip(answer, expected)))


def predict(server, model: str, data: bytes) -> list:
    r = requests.post(f"{server.url}/{model}/predict", files={"data": ("x.jpg", data)},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["prediction"]


@pytest.mark.parametrize("model", ["digits", "resnet18"])
@pytest.mark.parametrize("picture", IMAGES)
def test_a_mar_service_answers_as_the_0_4_archive_of_the_same_model(mms1, sample_models,
                                                                     model, picture):
    data = image(sample_models, picture)
    expected = predict(mms1, model, data)[0]  # the 0.4 answer: one list per output
    raw = requests.post(f"{mms1.url}/predictions/{model}-mar", data=data,
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    assert raw.headers["Content-Type"] == "application/json"
    assert same_answer(raw.json(), expected)
    form = requests.post(f"{mms1.url}/predictions/{model}-mar",
                         files={"data": ("x.jpg", data, "image/jpeg")}, timeout=60)
    assert form.status_code == 200, form.text
    assert form.json() == raw.json()
    # and its /<model>/predict route hands the form over the same way
    assert requests.post(f"{mms1.url}/{model}-mar/predict", files={"data": ("x.jpg", data)},
                         timeout=60).json() == raw.json()


@pytest.mark.parametrize("picture", IMAGES)
def test_predictions_serves_a_0_4_archive_raw_or_as_a_form(mms1, sample_models, picture):
    data = image(sample_models, picture)
    expected = {"prediction": predict(mms1, "resnet18", data)}
    raw = requests.post(f"{mms1.url}/predictions/resnet18", data=data,
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    assert raw.json() == expected
    form = requests.post(f"{mms1.url}/predictions/resnet18", files={"data": ("x.jpg", data)},
                         timeout=60)
    assert form.json() == expected


def test_the_handler_sees_its_context_and_the_request_as_mms_1_gave_it(mms1, sample_models):
    data = image(sample_models, "digit_0.jpg")
    r = requests.post(f"{mms1.url}/predictions/ctx", params={"kind": "x"},  # not passed on
                      files={"data": ("d.jpg", data, "image/jpeg"), "note": (None, "hi")},
                      headers={"X-Trace": "abc", "X-Request-Id": "trace-1",
                               "Authorization": "Bearer not-for-the-model"}, timeout=30)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["model_name"] == seen["loaded_as"] == "ctx"  # the served name
    assert seen["manifest_name"] == "checked"  # its own, for its file names
    assert seen["batch_size"] == 1  # MMS 1.x's default: one request per handle()
    assert seen["header"] == "abc"
    assert seen["authorization"] is None  # credentials stay in the frontend
    assert seen["seen"] == {"data": ["bytes", len(data)], "note": ["bytes", 2]}
    raw = requests.post(f"{mms1.url}/predictions/ctx", data=b'{"a": [1, 2]}',
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert raw.json()["seen"] == {"body": ["dict", {"a": [1, 2]}]}  # JSON parsed, as MMS 1.x
    text = requests.post(f"{mms1.url}/predictions/ctx", data="h\u00e9".encode(),
                         headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=30)
    assert text.json()["seen"] == {"body": ["str", 2]}


def test_the_handler_sets_status_and_media_type(mms1):
    r = requests.post(f"{mms1.url}/predictions/ctx", files={"status": (None, "201"),
                                                            "type": (None, "text/x-seen")},
                      timeout=30)
    assert r.status_code == 201
    assert r.headers["Content-Type"] == "text/x-seen"
    assert json.loads(r.content)["model_name"] == "ctx"


def test_a_handler_that_raises_is_that_requests_json_error(mms1):
    raised = requests.post(f"{mms1.url}/predictions/ctx", files={"action": (None, "raise")},
                           timeout=30)
    assert raised.status_code == 500
    assert raised.json()["type"] == "InternalServerException"  # MMS 1.1's name
    assert "asked to raise" in raised.json()["message"]
    assert "Traceback" not in raised.text
    refused = requests.post(f"{mms1.url}/predictions/ctx", files={"action": (None, "refuse")},
                            timeout=30)
    assert refused.status_code == 422
    assert refused.json() == {"code": 422, "type": "InvalidInput", "message": "asked to refuse"}
    assert requests.post(f"{mms1.url}/predictions/ctx", timeout=30).status_code == 200


def test_predictions_refuses_what_it_cannot_serve(mms1, sample_models):
    missing = requests.post(f"{mms1.url}/predictions/nope", data=b"x", timeout=30)
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
    connection = http.client.HTTPConnection("127.0.0.1", mms1.port, timeout=30)
    connection.putrequest("POST", "/predictions/ctx")
    connection.putheader("Content-Length", str(1024**3))  # refused before a byte is read
    connection.endheaders()
    big = connection.getresponse()
    assert big.status == 413 and json.loads(big.read())["type"] == "PayloadTooLarge"
    connection.close()
    not_json = requests.post(f"{mms1.url}/predictions/ctx", data=b"{nope",
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert not_json.status_code == 400 and "application/json" in not_json.json()["message"]
    not_an_image = requests.post(f"{mms1.url}/predictions/resnet18", data=b"not a jpeg",
                                 headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert not_an_image.status_code in (400, 415)
    # a GET reaches a handler with an empty body, as in MMS 1.1; a 0.4 model needs a POST
    assert requests.get(f"{mms1.url}/predictions/ctx", timeout=30).status_code == 200
    assert requests.get(f"{mms1.url}/predictions/digits", timeout=30).status_code == 405
    no_boundary = requests.post(f"{mms1.url}/predictions/ctx", data=b"--x\r\n",
                                headers={"Content-Type": "multipart/form-data"}, timeout=30)
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["message"]
    many = requests.post(f"{mms1.url}/predictions/ctx?" + "&".join(
        f"p{i}=1" for i in range(100)), timeout=30)
    assert many.status_code == 200 and "p0" not in many.json()["seen"]  # never parsed


def test_concurrent_requests_on_every_route_each_get_their_own_answer(mms1, sample_models):
    pictures = {name: image(sample_models, name) for name in IMAGES}
    expected = {name: predict(mms1, "digits", data)[0] for name, data in pictures.items()}

    def one(i: int) -> bool:
        name = IMAGES[i % len(IMAGES)]
        data = pictures[name]
        route = i % 3
        if route == 0:
            answer = predict(mms1, "digits", data)[0]
        elif route == 1:
            answer = requests.post(f"{mms1.url}/predictions/digits-mar", data=data,
                                   timeout=60).json()
        else:
            answer = requests.post(f"{mms1.url}/predictions/digits", data=data,
                                   timeout=60).json()["prediction"][0]
        return same_answer(answer, expected[name])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert all(pool.map(one, range(96)))


def test_the_management_api_works_as_mms_1_documented_it(mms1):
    models = f"{mms1.admin}/models"
    registered = mms1.api.post(models, params={
        "url": "checked.mar", "model_name": "ctx2", "initial_workers": "1", "batch_size": "2",
        "max_batch_delay": "50", "synchronous": "true"}, timeout=120)
    assert registered.status_code == 200, registered.text
    assert registered.json() == {"status": "Workers scaled"}  # MMS 1.1's words
    assert requests.post(f"{mms1.url}/predictions/ctx2", timeout=30).json()["batch_size"] == 2
    taken = mms1.api.post(models, params={"url": "checked.mar", "model_name": "ctx2"},
                          timeout=30)
    assert taken.status_code == 409 and taken.json()["type"] == "ConflictStatusException"

    # the worker batches a handler's requests like any other service's, up to batch_size
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda i: requests.post(
            f"{mms1.url}/predictions/ctx2", params={"i": str(i)}, timeout=30).json()["batch"],
            range(16)))
    assert max(batches) == 2 and min(batches) >= 1

    scaled = mms1.api.put(f"{models}/ctx2", params={"min_worker": "2", "max_worker": "2",
                                                    "synchronous": "true"}, timeout=120)
    assert scaled.status_code == 200, scaled.text
    described = mms1.api.get(f"{models}/ctx2", timeout=10).json()  # one object, as MMS 1.1
    assert described["modelName"] == "ctx2" and described["modelUrl"] == "checked.mar"
    assert described["minWorkers"] == 2 and described["batchSize"] == 2
    assert described["maxBatchDelay"] == 50 and described["loadedAtStartup"] is False
    assert [w["status"] for w in described["workers"]] == ["READY", "READY"]
    assert len({w["pid"] for w in described["workers"]}) == 2

    names, token = [], None
    while True:
        page = mms1.api.get(models, params={"limit": 2, **({"next_page_token": token}
                                                           if token else {})}, timeout=10).json()
        assert len(page["models"]) <= 2
        names += [m["modelName"] for m in page["models"]]
        token = page.get("nextPageToken")
        if token is None:
            break
    assert names == sorted(["digits", "resnet18", "digits-mar", "resnet18-mar", "ctx", "ctx2"])

    removed = mms1.api.delete(f"{models}/ctx2", timeout=60)
    assert removed.status_code == 200 and removed.json() == {
        "status": 'Model "ctx2" unregistered'}
    assert requests.post(f"{mms1.url}/predictions/ctx2", timeout=30).status_code == 404
    assert mms1.api.get(f"{models}/ctx2", timeout=10).status_code == 404


@pytest.mark.parametrize("params, words", [
    ({"url": "../../etc/passwd"}, "inside the model store"),
    ({"url": "/etc/passwd"}, "inside the model store"),
    ({"url": "http://127.0.0.1:1/x.mar"}, "model_url_allowlist"),
    ({"url": "checked.mar", "initial_workers": "lots"}, "initial_workers"),
    ({"url": "checked.mar", "initial_workers": "0"}, "initial_workers"),
    ({"url": "checked.mar", "synchronous": "maybe"}, "synchronous"),
    ({"url": "checked.mar", "handler": "x:y"}, "unknown query parameter"),
    ({"model_name": "x"}, "url"),
])
def test_bad_management_calls_are_clear_errors(mms1, params, words):
    refused = mms1.api.post(f"{mms1.admin}/models", params=params, timeout=30)
    assert refused.status_code == 400, refused.text
    assert words in refused.json()["message"]
    assert mms1.api.get(f"{mms1.admin}/models", params={"limit": "0"},
                        timeout=10).status_code == 400
    assert requests.post(f"{mms1.admin}/models", params={"url": "checked.mar"},
                         timeout=10).status_code == 401  # the token still guards it


def migrating_blocks(after: str) -> str:
    text = (ROOT / "docs" / "migrating.md").read_text()
    return re.search(r"```sh\n(.*?)```", text[text.index(after):], re.S).group(1)


def run_shell(command: str) -> list[str]:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_the_migration_guides_client_examples_run(mms1, sample_models):
    command = migrating_blocks("### Clients").replace("127.0.0.1:8080",
                                                      f"127.0.0.1:{mms1.port}")
    raw, form = (json.loads(line) for line in run_shell(command.replace(
        "curl -s", "curl -s -w '\\n'")))
    expected = predict(mms1, "resnet18", image(sample_models, "china.jpg"))
    assert raw == form == {"prediction": expected}


def test_the_migration_guides_management_examples_run(mms1):
    token_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"mxserve-test-{mms1.port}.token"
    command = migrating_blocks("### Management calls").replace(
        "127.0.0.1:8081", f"127.0.0.1:{mms1.management_port}").replace(
        "/path/to/run-dir/management.token", str(token_file)).replace("curl -s", "curl -s -w '\\n'")
    (registered, scaled, second, switched, listing, removed_1, removed_2) = (
        json.loads(line) for line in run_shell(command))
    assert registered == scaled == second == {"status": "Workers scaled"}
    assert switched == {"status": 'Default version of model "classifier" set to 2.0'}
    assert {"modelName": "classifier", "modelUrl": "digits-v2.mar"} in listing["models"]
    assert removed_1 == {"status": 'Model "classifier" unregistered'}
    assert removed_2 == {"status": 'Model "classifier" version 2.0 unregistered'}
    gone = requests.get(f"{mms1.admin}/models/classifier", headers=mms1.admin_headers,
                        timeout=10)
    assert gone.status_code == 404


def test_handler_models_are_described_and_refused_by_v2_clearly(mms1):
    from openapi_spec_validator import validate

    spec = requests.get(f"{mms1.url}/api-description", timeout=10).json()["description"]
    validate(spec)
    assert {"/predictions/ctx", "/ctx/predict", "/digits/predict"} <= set(spec["paths"])
    v2 = requests.post(f"{mms1.url}/v2/models/ctx/infer", json={"inputs": [{
        "name": "data", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, timeout=10)
    assert v2.status_code == 400 and "/predictions/ctx" in v2.json()["error"]
    assert requests.get(f"{mms1.url}/v2/models/digits", timeout=10).status_code == 200


def test_a_failed_optional_model_keeps_the_instance_ready_and_says_so_for_good(mms1):
    registered = mms1.api.post(f"{mms1.admin}/models", params={
        "url": "fails.mar", "model_name": "fails"}, timeout=60)
    assert registered.status_code == 202, registered.text
    eventually(lambda: mms1.api.get(f"{mms1.admin}/models/fails", timeout=10).json()[
        "status"] == "failed", 60, "the model failed")
    try:
        refused = requests.post(f"{mms1.url}/predictions/fails", timeout=30)
        assert refused.status_code == 500 and refused.json()["type"] == "ModelFailed"
        assert "the weights are missing" in refused.json()["message"]
        assert "Retry-After" not in refused.headers  # retrying will not help
        assert requests.get(f"{mms1.url}/ping", timeout=10).status_code == 503  # MMS 0.4's
        ready = requests.get(f"{mms1.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        assert requests.get(f"{mms1.url}/v2/health/ready", timeout=10).status_code == 200
        assert requests.get(f"{mms1.url}/livez", timeout=10).json() == {"live": True}
    finally:
        assert mms1.api.delete(f"{mms1.admin}/models/fails", timeout=60).status_code == 200
    assert requests.get(f"{mms1.url}/ping", timeout=10).status_code == 200
