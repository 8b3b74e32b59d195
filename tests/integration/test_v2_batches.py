"""KServe v2 batches as the metadata promises: a model whose metadata shows -1 on axis 0
takes any number of rows up to its max_batch_size, over REST and gRPC, answered in order
and equal to one-row requests; and model readiness answered alike by REST and gRPC for
every case."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import MAR_SERVICES, build_mar, rewritten
from tests.server_harness import Server, eventually

MAX_BATCH_SIZE = 8


def one_row_signature(archive: Path, out: Path) -> Path:
    """The MMS 0.4 archive with axis 0 of every shape set to 1, as MMS 0.4's own examples
    wrote their signatures (data_shape [1, 64]), so nothing but the route allows rows."""
    def one_row(data: bytes) -> bytes:
        signature = json.loads(data)
        for spec in signature["inputs"] + signature["outputs"]:
            spec["data_shape"][0] = 1
        return json.dumps(signature).encode()

    return rewritten(archive, out, "signature.json", one_row)


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_models):
    store = tmp_path_factory.mktemp("store")
    one_row_signature(sample_models["digits_mlp"], store / "mlp1.model")
    build_mar(None, MAR_SERVICES / "slow_to_load.py", "slow_to_load:handle", "slow", store)
    with Server(["mlp1=mlp1.model"], "--model-store", str(store), "--enable-model-api",
                "--max-batch-size", str(MAX_BATCH_SIZE), grpc=True) as instance:
        yield instance


@pytest.fixture(scope="module")
def clients(server):
    with triton_grpc.InferenceServerClient(server.grpc_address) as grpc_client:
        yield {"http": (triton_http, triton_http.InferenceServerClient(
                   server.url.removeprefix("http://"))),
               "grpc": (triton_grpc, grpc_client)}


def infer(module, client, rows: np.ndarray) -> np.ndarray:
    tensor = module.InferInput("data", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer("mlp1", [tensor]).as_numpy("softmax")


def test_the_metadata_promises_rows(clients):
    for module, client in clients.values():
        metadata = client.get_model_metadata("mlp1")
        shape = metadata.inputs[0].shape if module is triton_grpc else \
            metadata["inputs"][0]["shape"]
        assert list(shape) == [-1, 64]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_five_rows_answer_as_five_one_row_requests(server, clients, protocol):
    module, client = clients[protocol]
    rows = np.random.default_rng(7).random((5, 64), dtype=np.float32) * 16
    together = infer(module, client, rows)
    assert together.shape == (5, 10)
    alone = np.concatenate([infer(module, client, rows[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    for i in (0, 4):  # and as /predict answers its one row
        answer = requests.post(f"{server.url}/mlp1/predict",
                               data={"data": json.dumps(rows[i:i + 1].tolist())}, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(together[i], answer.json()["prediction"][0][0], atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_more_rows_than_max_batch_size_are_refused_by_name(clients, protocol):
    module, client = clients[protocol]
    rows = np.zeros((MAX_BATCH_SIZE + 1, 64), dtype=np.float32)
    with pytest.raises(InferenceServerException) as refused:
        infer(module, client, rows)
    assert "max_batch_size" in str(refused.value)
    assert refused.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_multi_row_requests_are_batched_with_others_and_each_answered_in_order(clients):
    module, client = clients["grpc"]
    rng = np.random.default_rng(11)
    requests_rows = [rng.random((int(n), 64), dtype=np.float32) * 16
                     for n in rng.integers(1, MAX_BATCH_SIZE + 1, 24)]
    expected = [np.concatenate([infer(module, client, r[i:i + 1]) for i in range(len(r))])
                for r in requests_rows[:4]]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda r: infer(module, client, r), requests_rows))
    for rows, answer in zip(requests_rows, answers):
        assert answer.shape == (len(rows), 10)
    for want, got in zip(expected, answers):
        np.testing.assert_allclose(got, want, atol=1e-5)


def rest_ready(server, model: str, version: str | None = None) -> str:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
    status = requests.get(server.url + path, timeout=10).status_code
    return {200: "ready", 503: "not ready", 404: "not found"}.get(status, str(status))


def grpc_ready(client, model: str, version: str | None = None) -> str:
    try:
        return "ready" if client.is_model_ready(model, version or "") else "not ready"
    except InferenceServerException as exc:
        return "not found" if exc.status() == "StatusCode.NOT_FOUND" else exc.status()


def test_model_ready_says_the_same_over_rest_and_grpc(server, clients):
    admin = requests.Session()
    admin.headers.update(server.admin_headers)
    registered = admin.post(f"{server.admin}/models", params={"url": "slow.mar"}, timeout=30)
    assert registered.status_code == 202, registered.text
    eventually(lambda: admin.get(f"{server.admin}/models/slow", timeout=10).json()[
        "status"] == "loading", 30, "slow loading")
    table = [  # (model, version, what both must say)
        ("mlp1", None, "ready"),
        ("mlp1", "1.0", "ready"),
        ("mlp1", "9.9", "not found"),
        ("nope", None, "not found"),
        ("nope", "1.0", "not found"),
        ("slow", None, "not ready"),
    ]
    _, client = clients["grpc"]
    for model, version, expected in table:
        assert (rest_ready(server, model, version), grpc_ready(client, model, version)) == \
            (expected, expected), (model, version)
