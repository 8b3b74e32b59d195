"""signature.json and MANIFEST.json parsing: frozen results, clear refusals."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from mxserve.common.errors import ArchiveError
from mxserve.common.manifest import parse_manifest, validate_model_name
from mxserve.common.signature import parse_signature

SIGNATURE = {"inputs": [{"data_name": "data", "data_shape": [0, 3, 224, 224]}],
             "input_type": "image/jpeg",
             "outputs": [{"data_name": "softmax", "data_shape": [0, 1000]}],
             "output_type": "application/json"}


def test_signature_parses_into_frozen_dataclasses():
    sig = parse_signature(SIGNATURE)
    assert sig.is_image and sig.inputs[0].name == "data"
    assert sig.inputs[0].image_size == (224, 224) and sig.inputs[0].channels == 3
    assert sig.inputs[0].accepts((7, 3, 224, 224)) and not sig.inputs[0].accepts((1, 3, 224, 1))
    assert sig.to_dict() == SIGNATURE
    with pytest.raises(dataclasses.FrozenInstanceError):
        sig.input_type = "x"  # type: ignore[misc]


def test_reference_signature_parses(reference):
    import zipfile

    with zipfile.ZipFile(reference / "digits.model") as zf:
        sig = parse_signature(json.loads(zf.read("signature.json")))
        manifest = parse_manifest(json.loads(zf.read("MANIFEST.json")))
    assert sig.inputs[0].shape == (1, 3, 32, 32) and sig.outputs[0].name == "softmax"
    assert manifest.model_name == "digits" and manifest.service_file == "mxnet_vision_service.py"
    assert manifest.archive_version == "0.2" and manifest.engine_version == "1.9.1"


def mutate(path, value):
    raw = copy.deepcopy(SIGNATURE)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


@pytest.mark.parametrize("raw, match", [
    ([], "must be a JSON object"),
    (mutate(["input_type"], "text/csv"), "input_type must be one of"),
    (mutate(["input_type"], KeyError), "input_type must be one of"),
    (mutate(["output_type"], "video/mp4"), "output_type must be one of"),
    (mutate(["inputs"], []), "'inputs' must be a non-empty list"),
    (mutate(["outputs"], KeyError), "'outputs' must be a non-empty list"),
    (mutate(["inputs", 0, "data_name"], ""), r"inputs\[0\].data_name"),
    (mutate(["inputs", 0, "data_shape"], [1, -3]), r"inputs\[0\].data_shape"),
    (mutate(["inputs", 0, "data_shape"], [1, "3"]), r"inputs\[0\].data_shape"),
    (mutate(["inputs", 0, "data_shape"], [1, 3, 224]), "fixed height and width"),
    (mutate(["inputs", 0, "data_shape"], [1, 3, 0, 224]), "fixed height and width"),
    (mutate(["inputs", 0, "data_shape"], [1, 4, 224, 224]), "1 or 3 channels"),
    (mutate(["inputs"], [{"data_name": "a", "data_shape": [1, 3, 8, 8]}] * 2), "duplicate"),
])
def test_bad_signatures_are_refused_with_the_reason(raw, match):
    with pytest.raises(ArchiveError, match=match):
        parse_signature(raw)


MANIFEST = {
    "Model-Archive-Version": 0.2, "Model-Archive-Description": "digits", "Model-Server": 0.4,
    "Model": {"Symbol": "digits-symbol.json", "Parameters": "digits-0000.params",
              "Signature": "signature.json", "Service": "mxnet_vision_service.py",
              "Description": "digits", "Model-Name": "digits", "Model-Format": "MXNet-Symbolic"},
    "Engine": {"MXNet": "1.9.1"},
}


@pytest.mark.parametrize("drop", ["Model-Archive-Version", "Model-Server", "Engine", "Model"])
def test_manifest_missing_top_level_key_is_named(drop):
    raw = copy.deepcopy(MANIFEST)
    del raw[drop]
    with pytest.raises(ArchiveError, match=f"missing required key '{drop}'"):
        parse_manifest(raw)


@pytest.mark.parametrize("drop", ["Model-Name", "Model-Format", "Signature", "Service",
                                  "Symbol", "Parameters"])
def test_manifest_missing_model_key_is_named(drop):
    raw = copy.deepcopy(MANIFEST)
    del raw["Model"][drop]
    with pytest.raises(ArchiveError, match=f"missing required key 'Model.{drop}'"):
        parse_manifest(raw)


@pytest.mark.parametrize("key, value, match", [
    ("Model-Format", "ONNX", "Model.Model-Format"),
    ("Symbol", "../../etc/passwd", "plain file name"),
    ("Service", "sub/dir.py", "plain file name"),
    ("Parameters", 5, "Model.Parameters"),
    ("Model-Name", "../x", "invalid model name"),
])
def test_manifest_bad_values_are_named(key, value, match):
    raw = copy.deepcopy(MANIFEST)
    raw["Model"][key] = value
    with pytest.raises(ArchiveError, match=match):
        parse_manifest(raw)


@pytest.mark.parametrize("name", ["", "..", "a/b", "é", "x" * 200, "-lead", "a b", "%2e%2e"])
def test_model_names_must_be_url_and_file_safe(name):
    with pytest.raises(ArchiveError):
        validate_model_name(name)


def test_plain_model_names_pass():
    for name in ("digits", "resnet-18", "my_model.v2", "R2D2"):
        assert validate_model_name(name) == name
