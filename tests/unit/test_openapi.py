"""The API description: MMS 0.4's paths and operationIds, and a valid Swagger 2.0 document."""
from __future__ import annotations

import json

from openapi_spec_validator import validate

from mxserve.common.signature import parse_signature
from mxserve.frontend.openapi import build_spec

DIGITS = parse_signature({"inputs": [{"data_name": "data", "data_shape": [1, 3, 32, 32]}],
                          "input_type": "image/jpeg",
                          "outputs": [{"data_name": "softmax", "data_shape": [1, 10]}]})
TENSOR = parse_signature({"inputs": [{"data_name": "x", "data_shape": [0, 64]},
                                     {"data_name": "mask", "data_shape": [0, 64]}],
                          "input_type": "application/json",
                          "outputs": [{"data_name": "y", "data_shape": [0, 10]}]})


def test_spec_is_valid_swagger_2():
    validate(build_spec({"digits": DIGITS, "mlp": TENSOR}, "127.0.0.1:8080"))


def test_keeps_mms04_paths_operation_ids_and_parameters(reference):
    recorded = json.loads((reference / "api-description.json").read_text())["description"]
    ours = build_spec({"digits": DIGITS}, "127.0.0.1:8080")
    for path in ("/", "/ping", "/api-description", "/digits/predict"):
        for method, operation in recorded["paths"][path].items():
            assert ours["paths"][path][method]["operationId"] == operation["operationId"]
            assert ours["paths"][path][method]["produces"] == operation["produces"]
    want = recorded["paths"]["/digits/predict"]["post"]
    got = ours["paths"]["/digits/predict"]["post"]
    assert got["consumes"] == want["consumes"]
    [param] = got["parameters"]
    [want_param] = want["parameters"]
    assert param["required"] is True and want_param["required"] == "true"  # 0.4's string bug
    for key in ("in", "name", "type", "description"):
        assert param[key] == want_param[key]
    assert (ours["swagger"], ours["info"], ours["host"], ours["schemes"]) == (
        recorded["swagger"], recorded["info"], recorded["host"], recorded["schemes"])


def test_json_inputs_are_string_form_fields_with_their_shape():
    spec = build_spec({"mlp": TENSOR}, "")
    params = spec["paths"]["/mlp/predict"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["x", "mask"]
    assert all(p["type"] == "string" and "[0, 64]" in p["description"] for p in params)
    assert "host" not in spec
