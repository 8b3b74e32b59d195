"""Shared servers: one for the read-only HTTP tests (starting one costs seconds), and the
MMS 1.x server of a model store of `.mar` archives (one per test file that uses it)."""
from __future__ import annotations

import pytest
import requests

from tests.conftest import MAR_SERVICES, build_mar, relabelled, with_version
from tests.server_harness import Server


@pytest.fixture(scope="session")
def server(sample_models, reference):
    with Server([f"digits={sample_models['digits']}",
                 f"resnet18={sample_models['resnet18']}",
                 f"digits_mlp={sample_models['digits_mlp']}",
                 f"mms04_digits={reference / 'digits.model'}"], grpc=True) as instance:
        yield instance


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_models):
    folder = tmp_path_factory.mktemp("model-store")
    vision = MAR_SERVICES / "vision_service.py"
    build_mar(sample_models["digits"], vision, "vision_service:handle", "digits", folder)
    build_mar(sample_models["resnet18"], vision, "vision_service:handle", "resnet18", folder)
    build_mar(None, MAR_SERVICES / "checked_context.py", "checked_context", "checked", folder)
    build_mar(None, MAR_SERVICES / "fails_to_load.py", "fails_to_load:handle", "fails", folder)
    # Version 2.0 of the digits .mar: the same weights, labels "v2-0"..., so its answers
    # show which version answered.
    work = tmp_path_factory.mktemp("digits-v2")
    relabelled_digits = relabelled(sample_models["digits"], "v2-", work / "digits.model")
    with_version(build_mar(relabelled_digits, vision, "vision_service:handle", "digits", work),
                 "2.0", folder / "digits-v2.mar")
    return folder


@pytest.fixture(scope="module")
def mms1(store, sample_models):
    # The .mar archives are named by file in the model store, as MMS 1.x's --models did;
    # `checked` is served under another name than its manifest's.
    with Server([f"digits={sample_models['digits']}", f"resnet18={sample_models['resnet18']}",
                 "digits-mar=digits.mar", "resnet18-mar=resnet18.mar", "ctx=checked.mar"],
                "--model-store", str(store), "--enable-model-api") as server:
        server.api = requests.Session()
        server.api.headers.update(server.admin_headers)
        yield server
