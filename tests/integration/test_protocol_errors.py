"""Each protocol's words for the same failures, walked from frontend/protocol_errors.py's
tables: unknown model, unknown version, wrong input, model failed and model loading, over
mxserve's /predict, MMS 1.x's /predictions, KServe v2 REST and KServe v2 gRPC."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mxserve.common.errors import HTTP_STATUS
from mxserve.frontend.protocol_errors import MMS1_TYPES, grpc_code_name
from tests.server_harness import Server, eventually

SERVICES = Path(__file__).resolve().parent.parent / "data" / "services"
WIDTH = {"mlp": 64, "failed": 4, "loading": 4, "nope": 4}  # each model's one row


def row(model: str) -> list[list[float]]:
    return [[0.5] * WIDTH[model]]

# case -> (model, version, a wrong input?, mxserve's error type)
CASES = {
    "unknown model": ("nope", None, False, "ModelNotFound"),
    "unknown version": ("mlp", "9.9", False, "ModelNotFound"),
    "wrong input": ("mlp", None, True, "InvalidInput"),
    "model failed": ("failed", None, False, "ModelFailed"),
    "model loading": ("loading", None, False, "ServiceUnavailable"),
}


@pytest.fixture(scope="module")
def server(sample_models):
    noop = sample_models["noop"]
    with Server([f"mlp={sample_models['digits_mlp']}", f"failed={noop}", f"loading={noop}"],
                "--services", f"failed={SERVICES / 'broken.py'}",
                f"loading={SERVICES / 'hangs_at_load.py'}", "--required-models", "mlp",
                "--model-load-timeout-s", "600", grpc=True, until="required") as instance:
        eventually(lambda: {name: model["status"] for name, model in
                            instance.catalog()["models"].items()} == {
            "mlp": "ready", "failed": "failed", "loading": "loading"}, 60,
            "one model failed and one loading")
        yield instance


def rest(server, prefix: str, model: str, version: str | None, wrong: bool):
    versioned = f"{model}/versions/{version}" if version else model
    if prefix == "/predict":
        path = f"/{model}/predict" if not version else f"/predictions/{model}/{version}"
        return requests.post(server.url + path, data={"nothing" if wrong else "data":
                                                     json.dumps(row(model))}, timeout=30)
    if prefix == "/predictions":
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        body = b"not json" if wrong else json.dumps(row(model)).encode()
        return requests.post(server.url + path, data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)
    tensor = {"name": "data", "datatype": "FP32", "shape": [1, WIDTH[model]],
              "data": row(model)[0]}
    if wrong:
        tensor["datatype"] = "INT8"
    return requests.post(f"{server.url}/v2/models/{versioned}/infer",
                         json={"inputs": [tensor]}, timeout=30)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("protocol", ["/predict", "/predictions", "v2-rest", "v2-grpc"])
def test_every_protocol_words_each_failure_from_its_table(server, protocol, case):
    model, version, wrong, ours = CASES[case]
    if protocol == "/predict" and version:
        protocol = "/predictions"  # a version is reached only by MMS 1.x's route
    status = HTTP_STATUS[ours]
    if protocol == "v2-grpc":
        tensor = triton.InferInput("data", [1, WIDTH[model]], "INT8" if wrong else "FP32")
        tensor.set_data_from_numpy(np.array(row(model), dtype=np.int8 if wrong else
                                            np.float32))
        with triton.InferenceServerClient(server.grpc_address) as client, \
                pytest.raises(InferenceServerException) as error:
            client.infer(model, [tensor], model_version=version or "")
        assert error.value.status() == f"StatusCode.{grpc_code_name(status)}", error.value
        assert error.value.message()
        return
    answer = rest(server, protocol, model, version, wrong)
    assert answer.status_code == status, answer.text
    body = answer.json()
    if protocol == "v2-rest":
        assert set(body) == {"error"} and body["error"]
    else:
        words = MMS1_TYPES.get(ours, ours) if protocol == "/predictions" else ours
        assert body["type"] == words and body["code"] == status and body["message"]
        assert body["request_id"] == answer.headers["X-Request-Id"]
    if status == 503:
        assert answer.headers["Retry-After"]
    assert "Traceback" not in answer.text


def test_the_tables_name_every_case_they_are_walked_for():
    for _, _, _, ours in CASES.values():
        assert ours in HTTP_STATUS
    assert MMS1_TYPES["ModelNotFound"] == "ModelNotFoundException"
    assert grpc_code_name(404) == "NOT_FOUND" and grpc_code_name(599) == "INTERNAL"
