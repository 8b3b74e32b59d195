"""MMS 1.x `.mar` archives: the manifest, safe loading, where --models finds them, and how a
handler's batch is run (requests in, answers and errors out)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mxserve.common.archive import load_archive
from mxserve.common.config import load_config, model_entries
from mxserve.common.errors import ArchiveError, ConfigError, InvalidInput
from mxserve.common.mar_manifest import parse_mar_manifest
from mxserve.common.protocol import ANSWER, CONTENT_TYPE, STATUS, Item, RequestItem, fields_of
from mxserve.worker.handler_batch import parsed_value, run_handler_batch
from mxserve.worker.services.handler_service import HandlerService
from tests.conftest import MAR_SERVICES, build_mar

MANIFEST = {"runtime": "python", "model": {"modelName": "m", "handler": "svc:handle"},
            "modelServerVersion": "1.0", "implementationVersion": "1.0",
            "specificationVersion": "1.0"}


def manifest(**model) -> dict:
    return {**MANIFEST, "model": {**MANIFEST["model"], **model}}


def test_the_manifest_model_archiver_writes_is_read():
    mar = parse_mar_manifest(MANIFEST)
    assert (mar.model_name, mar.module, mar.function, mar.version) == ("m", "svc", "handle",
                                                                      "1.0")
    assert parse_mar_manifest(manifest(handler="svc.py")).handler == "svc"
    assert parse_mar_manifest(manifest(handler="pkg.mod")).function == ""
    assert parse_mar_manifest(manifest(modelVersion=2.1)).version == "2.1"  # torch's --version


@pytest.mark.parametrize("raw, words", [
    ({**MANIFEST, "runtime": "java"}, "runtime"),
    (manifest(handler="../evil:handle"), "model.handler"),
    (manifest(handler="/abs/path"), "model.handler"),
    (manifest(handler="svc:handle:again"), "model.handler"),
    (manifest(modelName="../x"), "invalid model name"),
    (manifest(modelVersion="../2.0"), "modelVersion"),
    (manifest(modelVersion="2.0/evil"), "modelVersion"),
    (manifest(modelVersion="v" * 65), "modelVersion"),
    (manifest(modelVersion="2@0"), "modelVersion"),
    # `$` matches before a final newline: every pattern must match the whole string
    (manifest(modelVersion="2.0\n"), "modelVersion"),
    (manifest(modelName="digits\n"), "invalid model name"),
    (manifest(handler="svc:handle\n"), "model.handler"),
    ({"runtime": "python"}, "model"),
    ([], "invalid"),
])
def test_a_bad_manifest_is_refused_by_name(raw, words):
    with pytest.raises(ArchiveError, match=words):
        parse_mar_manifest(raw)


def write_mar(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_a_model_archiver_mar_loads(tmp_path):
    mar = build_mar(None, MAR_SERVICES / "checked_context.py", "checked_context", "checked",
                    tmp_path)
    archive = load_archive(mar, tmp_path / "extracted", name="served-as")
    assert archive.is_handler and archive.signature is None
    assert archive.name == "served-as" and archive.mar.model_name == "checked"
    assert (archive.root / "checked_context.py").is_file()


@pytest.mark.parametrize("entries, words", [
    ({"MAR-INF/MANIFEST.json": json.dumps(MANIFEST)}, "not in the archive"),
    ({"MAR-INF/MANIFEST.json": json.dumps(MANIFEST), "svc.py": "", "../up.py": ""},
     "escapes"),
    ({"MAR-INF/MANIFEST.json": "{nope", "svc.py": ""}, "not valid JSON"),
    ({"svc.py": ""}, "no MANIFEST.json"),
])
def test_an_unsafe_or_broken_mar_is_refused(tmp_path, entries, words):
    with pytest.raises(ArchiveError, match=words):
        load_archive(write_mar(tmp_path / "m.mar", entries), tmp_path / "out")
    assert not list((tmp_path / "out").glob("m-*"))  # nothing left behind


def test_a_symlinked_handler_in_a_folder_is_refused(tmp_path):
    folder = tmp_path / "m"
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "elsewhere.py").write_text("")
    (folder / "svc.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(ArchiveError, match="symbolic link"):
        load_archive(folder)


def test_models_are_found_in_the_model_store_as_mms_1_did(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for name in ("a.mar", "b.model", "notes.txt"):
        (store / name).write_bytes(b"")
    config = load_config({"models": ["all", "x=a.mar"], "model_store": str(store)})
    assert model_entries(config) == [(None, str(store / "a.mar")), (None, str(store / "b.model")),
                                     ("x", str(store / "a.mar"))]
    with pytest.raises(ConfigError, match="model_store"):
        load_config({"models": ["all"]})
    with pytest.raises(ConfigError, match="POST /models"):
        load_config({"models": ["r=https://example.com/r.mar"]})


def test_values_are_handed_over_as_mms_1_did():
    assert parsed_value("v", b'{"a": 1}', "application/json") == {"a": 1}
    assert parsed_value("v", "h\u00e9".encode(), "text/plain; charset=utf-8") == "h\u00e9"
    assert parsed_value("v", b"\xff", "image/jpeg") == b"\xff"
    assert parsed_value("v", b"\xff", "") == b"\xff"
    with pytest.raises(InvalidInput, match="application/json"):
        parsed_value("v", b"{nope", "application/json")


ECHO = '''
import json
from mms.service import PredictionException

class Echo:
    def initialize(self, context):
        self.batch_size = context.system_properties["batch_size"]

    def handle(self, data, context):
        out = []
        for i, request in enumerate(data):
            if request.get("body") == b"raise":
                raise ValueError("raised")
            if request.get("body") == b"refuse":
                raise PredictionException("refused", 409)
            if request.get("body") == b"short":
                return []
            context.set_response_content_type(i, context.get_request_header(i, "Accept"))
            out.append(request["body"] if request["body"] != b"text" else "t\u00e9xt")
        return out
'''


@pytest.fixture()
def echo(tmp_path) -> HandlerService:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest(handler="echo")))
    return HandlerService(load_archive(tmp_path), None, 4)


def request_item(item_id: str, body: bytes, accept: str = "") -> Item:
    fields = RequestItem(parameters={"body": "application/octet-stream"},
                         headers={"Accept": accept} if accept else {})
    return Item(item_id, fields_of(fields), {"body": np.frombuffer(body, np.uint8)})


def test_a_batch_gets_one_answer_or_error_each(echo):
    items = [request_item("a", b"\x00bytes", "image/png"), request_item("b", b"raise"),
             request_item("c", b"text"), request_item("d", b"refuse")]
    outcomes = {o.id: o for o in run_handler_batch(echo, items, [float("inf")] * 4)}
    assert outcomes["a"].to_item().arrays[ANSWER] == b"\x00bytes"
    assert outcomes["a"].to_item().fields == {CONTENT_TYPE: "image/png", STATUS: 200}
    assert outcomes["b"].error.type == "ModelError" and "raised" in outcomes["b"].error.message
    assert outcomes["c"].body == "t\u00e9xt".encode() and outcomes["c"].content_type.startswith(
        "text/plain")
    assert outcomes["d"].status == 409 and json.loads(outcomes["d"].body)["message"] == "refused"


def test_a_wrong_answer_count_and_a_late_request_are_errors(echo):
    short, late = run_handler_batch(echo, [request_item("s", b"short"), request_item("l", b"x")],
                                    [float("inf"), 0.0])
    assert short.error.type == "ModelError" and "one answer per request" in short.error.message
    assert late.error.type == "DeadlineExceeded"


def test_a_malformed_handler_request_is_refused(echo):
    item = Item("m", fields_of(RequestItem(parameters={"body": 3})), {})
    (outcome,) = run_handler_batch(echo, [item], [float("inf")])
    assert outcome.error.type == "InvalidInput"


def test_a_handler_that_fails_to_initialise_fails_the_load(tmp_path):
    (tmp_path / "bad.py").write_text("class Bad:\n    def initialize(self, c):\n"
                                     "        raise RuntimeError('no weights')\n"
                                     "    def handle(self, d, c):\n        return d\n")
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest(handler="bad")))
    with pytest.raises(ArchiveError, match="no weights"):
        HandlerService(load_archive(tmp_path), None, 1)


def test_an_unreadable_archive_is_keyed_by_its_file_name_never_its_path(tmp_path):
    from mxserve.worker.broker.models import load_configured

    broken = tmp_path / "secret-dir" / "broken.mar"
    broken.parent.mkdir()
    broken.write_bytes(b"not a zip")
    config = load_config({"models": [str(broken)]}, env={})
    models, _ = load_configured(config, tmp_path / "extracted")
    assert list(models) == ["broken.mar"]
    assert models["broken.mar"].error and str(tmp_path) not in "".join(models)
