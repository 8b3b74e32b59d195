"""The management API on the real stack: models registered (from a path or an allow-listed
URL), scaled and removed while serving, without a restart; routes only on the management
listener."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DATA
from tests.integration.test_server_http import assert_error
from tests.server_harness import Server, eventually, free_port


@pytest.fixture(scope="module")
def managed(sample_models, tmp_path_factory):
    served = tmp_path_factory.mktemp("archives")
    (served / "allowed").mkdir()
    shutil.copy(sample_models["noop"], served / "allowed" / "noop.model")
    shutil.copy(sample_models["noop"], served / "elsewhere.model")
    store = tmp_path_factory.mktemp("store")
    shutil.copy(sample_models["noop"], store / "noop.model")
    (store / "broken.model").write_bytes(b"not a zip")
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()),
        functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    files_url = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        with Server([f"digits={sample_models['digits']}"],
                    "--model-url-allowlist", f"{files_url}/allowed/", "--enable-model-api",
                    "--model-store", str(store),
                    "--services", f"slow={DATA / 'services' / 'faulty.py'}") as server:
            server.files_url = files_url
            server.digits_archive = sample_models["digits"]
            server.store = store
            server.api = requests.Session()
            server.api.headers.update(server.admin_headers)
            yield server
    finally:
        files.shutdown()


def wait_for(check, timeout_s=60.0, what="condition"):
    return eventually(check, timeout_s, what, every_s=0.2)


def model(managed, name):
    response = managed.api.get(f"{managed.admin}/models/{name}", timeout=10)
    return response.json() if response.status_code == 200 else None


def workers_of(managed, name):
    return [pid for pid in managed.processes("worker --archive")
            if f"--model-name {name} " in open(f"/proc/{pid}/cmdline").read().replace(
                "\0", " ")]


def noop(managed, name, row=(1.0, 2.0, 3.0, 4.0)):
    return requests.post(f"{managed.url}/{name}/predict", data={"data": json.dumps([row])},
                         timeout=30)


def test_management_routes_exist_only_on_the_management_listener(managed):
    for path in ("/models", "/models/digits", "/metrics", "/models/digits/1.0/set-default"):
        for method in ("GET", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE"):
            assert_error(requests.request(method, managed.url + path, timeout=10), 404,
                         "ResourceNotFoundException" if path.startswith("/models")
                         else "NotFound")
    # on its own listener, nothing answers before the token: not even a preflight
    for method in ("OPTIONS", "PATCH"):
        refused = requests.request(method, f"{managed.admin}/models", timeout=10)
        assert refused.status_code == 401, (method, refused.text)
    assert managed.api.options(f"{managed.admin}/models", timeout=10).status_code == 405
    listing = managed.api.get(f"{managed.admin}/models", timeout=10).json()["models"]
    assert {"modelName": "digits", "modelUrl": managed.digits_archive.name} in listing
    digits = model(managed, "digits")
    assert digits["status"] == "ready" and digits["ready"] == 1 and digits["minWorkers"] == 1
    assert digits["devices"] == ["cpu"] and digits["loadedAtStartup"] is True
    [worker] = digits["workers"]
    assert worker["status"] in ("READY", "BUSY") and worker["memoryUsage"] > 0
    assert {"max_batch_size", "max_batch_delay_ms", "queue"} <= set(digits)


def test_register_scale_and_remove_a_model_without_a_restart(managed, sample_models):
    created = managed.api.post(f"{managed.admin}/models", json={
        "path": str(managed.store / "noop.model"), "name": "noop2", "workers": 1,
        "max_batch_size": 4}, timeout=60)
    assert created.status_code == 202, created.text
    assert created.json()["status"].startswith('Model "noop2" registered')
    assert model(managed, "noop2")["batchSize"] == 4
    wait_for(lambda: (model(managed, "noop2") or {}).get("status") == "ready", what="ready")
    assert noop(managed, "noop2").json()["prediction"] == [[[1.0, 2.0, 3.0, 4.0]]]

    def described_by_every_frontend() -> bool:  # new connections: both processes answer some
        return all("/noop2/predict" in requests.get(
            managed.url + "/api-description", timeout=10).json()["description"]["paths"]
            for _ in range(12))

    wait_for(described_by_every_frontend, 10, "description of noop2 from both frontends")

    scaled = managed.api.put(f"{managed.admin}/models/noop2", json={"workers": 2}, timeout=30)
    assert scaled.status_code == 202 and model(managed, "noop2")["minWorkers"] == 2
    wait_for(lambda: model(managed, "noop2")["ready"] == 2, what="second worker")
    assert len(workers_of(managed, "noop2")) == 2
    down = managed.api.put(f"{managed.admin}/models/noop2", json={"workers": 1,
                                                                 "max_batch_delay_ms": 2},
                        timeout=30)
    assert down.status_code == 202
    assert model(managed, "noop2")["minWorkers"] == 1
    assert model(managed, "noop2")["maxBatchDelay"] == 2
    wait_for(lambda: len(workers_of(managed, "noop2")) == 1, what="scale-down")
    assert all(noop(managed, "noop2").status_code == 200 for _ in range(5))

    extracted = list((managed.run_dir() / "models").glob("noop-*"))
    assert extracted
    removed = managed.api.delete(f"{managed.admin}/models/noop2", timeout=60)
    assert removed.status_code == 200
    assert removed.json() == {"status": 'Model "noop2" unregistered'}
    wait_for(lambda: not any(p.exists() for p in extracted), what="extraction removed")
    assert_error(noop(managed, "noop2"), 404, "ModelNotFound")
    wait_for(lambda: not workers_of(managed, "noop2"), what="workers stopped")
    assert model(managed, "noop2") is None
    assert noop(managed, "digits").status_code == 400  # the others were never touched


def test_delete_lets_queued_requests_finish(managed, sample_models):
    created = managed.api.post(f"{managed.admin}/models", json={
        "path": "noop.model", "name": "slow", "max_batch_size": 1}, timeout=60)
    assert created.status_code == 202, created.text
    wait_for(lambda: (model(managed, "slow") or {}).get("status") == "ready", what="ready")
    with ThreadPoolExecutor(4) as pool:
        queued = [pool.submit(noop, managed, "slow", (0.7, i, 0, 0)) for i in range(3)]
        time.sleep(0.3)
        started = time.monotonic()
        removed = managed.api.delete(f"{managed.admin}/models/slow", timeout=60)
        took = time.monotonic() - started
        assert [f.result().status_code for f in queued] == [200, 200, 200]
    assert removed.status_code == 200 and took > 1.0  # it waited for the queue
    assert_error(noop(managed, "slow"), 404, "ModelNotFound")


def test_register_from_an_allow_listed_url_only(managed):
    refused = managed.api.post(f"{managed.admin}/models", json={
        "url": f"{managed.files_url}/elsewhere.model", "name": "x"}, timeout=30)
    assert_error(refused, 400, "BadRequestException", "model_url_allowlist")
    created = managed.api.post(f"{managed.admin}/models", json={
        "url": f"{managed.files_url}/allowed/noop.model", "name": "fromurl"}, timeout=60)
    assert created.status_code == 202, created.text
    wait_for(lambda: (model(managed, "fromurl") or {}).get("status") == "ready", what="ready")
    assert noop(managed, "fromurl").status_code == 200
    assert managed.api.delete(f"{managed.admin}/models/fromurl", timeout=60).status_code == 200


def test_urls_that_only_look_allowed_are_refused(managed):
    port = managed.files_url.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}1/allowed/noop.model",  # a port with that prefix
                f"{managed.files_url}/allowed/../elsewhere.model",
                f"{managed.files_url}/allowed/%2e%2e/elsewhere.model",
                f"http://x@127.0.0.1:{port}/allowed/noop.model",
                f"{managed.files_url}/allowed/noop.model\r\nX: y",
                f"http://127.0.0.1:{managed.management_port}/allowed/x.model"):
        refused = managed.api.post(f"{managed.admin}/models", json={"url": url}, timeout=30)
        assert_error(refused, 400, "BadRequestException")
        assert "Unauthorized" not in refused.text
    assert requests.get(managed.url + "/ping", timeout=10).status_code == 200


def test_bad_registrations_are_clear_errors(managed):
    assert_error(managed.api.post(f"{managed.admin}/models", json={"path": "broken.model"},
                               timeout=30), 400, "BadRequestException", "not a valid zip")
    assert_error(managed.api.post(f"{managed.admin}/models", json={
        "path": "nonexistent.model"}, timeout=30), 404, "ModelNotFoundException",
        "not found in model store")
    assert_error(managed.api.post(f"{managed.admin}/models", data="x", timeout=30), 400,
                 "BadRequestException", "JSON object")
    assert_error(managed.api.put(f"{managed.admin}/models/digits", json={"workers": 0},
                              timeout=30), 400, "BadRequestException", "workers")
    assert_error(managed.api.delete(f"{managed.admin}/models/nope", timeout=30), 404,
                 "ModelNotFoundException")


@pytest.mark.parametrize("body, named", [
    ({"path": "noop.model", "worker": 2}, "worker"),
    ({"path": "noop.model", "workers": -1}, "workers"),
    ({"path": "noop.model", "workers": 1.5}, "workers"),
    ({"path": "noop.model", "max_batch_size": -1}, "max_batch_size"),
    ({"path": "noop.model", "max_batch_size": True}, "max_batch_size"),
    ({"path": "noop.model", "max_batch_delay_ms": 1e9}, "max_batch_delay_ms"),
    ({"path": ["noop.model"]}, "path"),
])
def test_management_bodies_are_checked_against_a_schema(managed, body, named):
    refused = managed.api.post(f"{managed.admin}/models", json=body, timeout=30)
    assert_error(refused, 400, "BadRequestException", named)
    assert model(managed, "noop") is None


def test_nan_and_infinity_are_not_json(managed):
    for raw in ('{"path": "noop.model", "workers": NaN}',
                '{"workers": Infinity}'):
        refused = managed.api.post(f"{managed.admin}/models", data=raw, timeout=30,
                                   headers={"Content-Type": "application/json"})
        assert_error(refused, 400, "BadRequestException", "JSON")
    scaled = managed.api.put(f"{managed.admin}/models/digits", data='{"workers": -Infinity}',
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert_error(scaled, 400, "BadRequestException", "JSON")


def test_a_rejected_archive_leaves_no_extraction(managed):
    before = set((managed.run_dir() / "models").iterdir())
    refused = managed.api.post(f"{managed.admin}/models", json={"path": "broken.model"},
                               timeout=30)
    assert refused.status_code == 400
    duplicate = managed.api.post(f"{managed.admin}/models", json={
        "path": "noop.model", "name": "digits"}, timeout=30)
    assert_error(duplicate, 409, "ConflictStatusException", "already registered")
    assert set((managed.run_dir() / "models").iterdir()) == before


def test_a_registered_model_survives_a_broker_restart(managed):
    created = managed.api.post(f"{managed.admin}/models", json={
        "path": "noop.model", "name": "survivor", "max_batch_size": 2}, timeout=60)
    assert created.status_code == 202, created.text
    wait_for(lambda: (model(managed, "survivor") or {}).get("status") == "ready", what="ready")
    [broker] = managed.processes("worker.broker")
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: managed.processes("worker.broker") not in ([], [broker]),
             what="a new broker")
    restored = wait_for(lambda: (model(managed, "survivor") or {}).get("status") == "ready"
                        and model(managed, "survivor"), what="the model restored")
    assert restored["max_batch_size"] == 2
    wait_for(lambda: noop(managed, "survivor").status_code == 200, what="served again")
    assert managed.api.delete(f"{managed.admin}/models/survivor", timeout=60).status_code == 200
    assert "survivor" not in (managed.run_dir() / "registered.json").read_text()
