"""The seed's public API, ServingFrontend: registration, loading forms, endpoints, errors."""
from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from mxserve.instance import ServingFrontend
from mxserve.instance.serving_frontend import ServingFrontendError
from tests.conftest import DATA

SERVICES = DATA / "services"


@pytest.fixture
def serving():
    return ServingFrontend("test_app")


def test_an_app_name_is_required():
    with pytest.raises(ServingFrontendError, match="Failed to initialise serving frontend"):
        ServingFrontend("")


def test_register_module_with_one_class(serving):
    [cls] = serving.register_module(SERVICES / "one.py")
    assert cls.__name__ == "OnlyService"
    assert serving.get_registered_modelservices() == {"OnlyService": cls}
    assert serving.get_registered_modelservices("OnlyService") == {"OnlyService": cls}


def test_register_module_keeps_leaves_only(serving):
    classes = serving.register_module(SERVICES / "two.py")
    assert sorted(c.__name__ for c in classes) == ["FirstService", "SecondService"]
    assert "CommonBase" not in serving.get_registered_modelservices()
    both = serving.get_registered_modelservices(["FirstService", "SecondService"])
    assert set(both) == {"FirstService", "SecondService"}


@pytest.mark.parametrize("file_name, match", [
    ("none.py", "No valid python class derived from a ModelService is in module file"),
    ("broken.py", "importing broken.py failed: RuntimeError: this module fails at import"),
    ("missing.py", "is not a Python file"),
])
def test_register_module_errors_say_what_is_wrong(serving, file_name, match):
    with pytest.raises(ServingFrontendError, match=match):
        serving.register_module(SERVICES / file_name)


def test_unknown_names_are_named(serving):
    serving.register_module(SERVICES / "one.py")
    with pytest.raises(ServingFrontendError, match=r"no registered model service named \['Nope'\]"):
        serving.get_registered_modelservices("Nope")
    with pytest.raises(ServingFrontendError, match="no loaded model named"):
        serving.get_loaded_modelservices(["digits"])


def test_load_models_dict_form(serving, reference):
    [cls] = serving.register_module(SERVICES / "one.py")
    serving.load_models({"digits": str(reference / "digits.model")}, cls)
    loaded = serving.get_loaded_modelservices("digits")["digits"]
    assert loaded.service_class is cls and loaded.model_name == "digits"
    assert loaded.signature["inputs"][0]["data_shape"] == [1, 3, 32, 32]
    assert loaded.labels == [str(d) for d in range(10)]


def test_load_models_seed_tuple_form(serving, reference):
    [cls] = serving.register_module(SERVICES / "one.py")
    manifest = {"Model": {"Model-Name": "digits"}}
    serving.load_models([("mnist", "digits", str(reference / "digits.model"), manifest),
                         ("mnist2", "digits", str(reference / "digits.model"), None)], cls,
                        gpu=0)
    loaded = serving.get_loaded_modelservices()
    assert set(loaded) == {"mnist", "mnist2"}
    assert loaded["mnist"].name == "mnist" and loaded["mnist"].model_name == "digits"
    assert loaded["mnist"].manifest == manifest and loaded["mnist"].gpu == 0
    assert loaded["mnist2"].manifest["Model"]["Symbol"] == "digits-symbol.json"


@pytest.mark.parametrize("models, cls_name, match", [
    ([("a", "b")], "OnlyService", r"must be \(service_name, model_name, model_path, manifest\)"),
    ("digits.model", "OnlyService", "models must be a dict"),
    ({"x": "/does/not/exist.model"}, "OnlyService", "model 'x': model archive not found"),
    ({"x": "x"}, "str", "is not a ModelService class"),
])
def test_load_models_errors(serving, models, cls_name, match):
    [cls] = serving.register_module(SERVICES / "one.py")
    with pytest.raises(ServingFrontendError, match=match):
        serving.load_models(models, str if cls_name == "str" else cls)


def test_same_name_twice_is_refused(serving, reference):
    [cls] = serving.register_module(SERVICES / "one.py")
    serving.load_models({"digits": str(reference / "digits.model")}, cls)
    with pytest.raises(ServingFrontendError, match="already served as 'digits'"):
        serving.load_models({"digits": str(reference / "digits.model")}, cls)


LABELS = {"/digits/labels": {"get": {"operationId": "digits_labels",
                                     "produces": ["application/json"],
                                     "responses": {"200": {"description": "OK"}}}}}


def test_endpoints_appear_in_a_valid_spec(serving, reference):
    [cls] = serving.register_module(SERVICES / "one.py")
    serving.load_models({"digits": str(reference / "digits.model")}, cls)
    serving.add_endpoint(LABELS, lambda: {"labels": []})
    serving.add_endpoint({"/items/{item_id}": {"post": {"operationId": "item", "parameters": [
        {"in": "path", "name": "item_id", "type": "string", "required": True}]}}},
        lambda item_id: {"id": item_id})
    spec = serving.setup_openapi_endpoints("127.0.0.1", 8099)
    validate(spec)
    assert spec["host"] == "127.0.0.1:8099"
    assert spec["paths"]["/digits/labels"]["get"]["operationId"] == "digits_labels"
    assert spec["paths"]["/digits/predict"]["post"]["operationId"] == "digits_predict"
    assert "/items/{item_id}" in spec["paths"]


@pytest.mark.parametrize("definition, match", [
    ({}, "exactly one path"),
    ({"/a": {}, "/b": {}}, "exactly one path"),
    ({"noslash": {"get": {"operationId": "x"}}}, "must start with '/'"),
    ({"/ping": {"get": {"operationId": "x"}}}, "mxserve's own routes"),
    ({"/digits/predict": {"post": {"operationId": "x"}}}, "mxserve's own routes"),
    ({"/a": {"get": {"operationId": "x"}, "post": {"operationId": "y"}}}, "exactly one method"),
    ({"/a": {"fetch": {"operationId": "x"}}}, "is not one of"),
    ({"/a": {"get": {}}}, "needs an operationId"),
])
def test_add_endpoint_refuses_bad_definitions(serving, definition, match):
    with pytest.raises(ServingFrontendError, match=match):
        serving.add_endpoint(definition, lambda: None)


def test_operation_ids_are_unique(serving):
    serving.add_endpoint(LABELS, lambda: {})
    with pytest.raises(ServingFrontendError, match="'digits_labels' is taken"):
        serving.add_endpoint({"/other": {"get": {"operationId": "digits_labels"}}}, lambda: {})


def test_serving_without_models_is_refused(serving):
    with pytest.raises(ServingFrontendError, match="no models loaded"):
        serving.start_model_serving("127.0.0.1", 8099)
