"""The calls recorded from MMS 1.1.11 (scripts/record_mms11.py) and replayed against mxserve
(tests/integration/test_mms11_replay.py), and how an answer is written down: one list and
one function each, shared, so what is recorded is exactly what is replayed.

The model store holds two archives built by the real model-archiver from
tests/data/mms_template: `digits.mar` (the template's vision service on MMS 0.4's digits
weights) and `echo.mar` (Context calls of every kind). Both servers serve them as
`digits` and `echo` with one worker each; registrations use the same store.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "data" / "mms_template"
IMAGES = ROOT / "tests" / "data" / "mms04" / "images"
WEIGHTS = ROOT / "tests" / "data" / "mms04" / "digits.model"
RECORDINGS = ROOT / "tests" / "data" / "mms11" / "recorded.json"
MODELS = {"digits": "digits.mar", "echo": "echo.mar"}
# Values that differ on every run of either server: compared by type, not by value.
VOLATILE_KEYS = frozenset({"id", "startTime", "memoryUsage", "pid", "requestId",
                           "request_id"})
SHOWN_HEADERS = ("content-type", "x-echo")
_BOUNDARY = re.compile(r"boundary=[0-9a-f]+")


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    listener: str = "inference"  # or "management"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    form: tuple[tuple[str, Any], ...] = ()  # (name, text) or (name, (file, bytes, type))


def _image(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def _echo(name: str, **fields: str) -> Case:
    """A form whose fields tell echo.mar what to do (MMS 1.1 gives a POST's query
    parameters to no handler)."""
    return Case(f"echo_{name}", "POST", "/predictions/echo", headers={"X-Trace": "abc"},
                form=tuple(fields.items()))


def cases() -> list[Case]:
    raw = [Case(f"digits_raw_{n}", "POST", "/predictions/digits",
                headers={"Content-Type": "image/jpeg"}, body=_image(f"digit_{n}.jpg"))
           for n in range(10)]
    return [
        Case("ping", "GET", "/ping"),
        *raw,
        Case("digits_form", "POST", "/predictions/digits",
             form=(("data", ("d.jpg", _image("digit_3.jpg"), "image/jpeg")),)),
        Case("digits_corrupt_image", "POST", "/predictions/digits",
             headers={"Content-Type": "image/jpeg"}, body=b"not an image"),
        Case("echo_json", "POST", "/predictions/echo",
             headers={"Content-Type": "application/json", "X-Trace": "abc"},
             body=b'{"a": [1, 2], "b": "c"}'),
        Case("echo_text", "POST", "/predictions/echo",
             headers={"Content-Type": "text/plain; charset=utf-8"}, body="h\u00e9".encode()),
        Case("echo_octets", "POST", "/predictions/echo",
             headers={"Content-Type": "application/octet-stream"}, body=b"\x00\x01\x02"),
        Case("echo_query_get", "GET", "/predictions/echo", query={"kind": "x"}),
        Case("echo_query_post", "POST", "/predictions/echo", query={"kind": "x"},
             headers={"Content-Type": "application/json"}, body=b'{"n": 2}'),
        Case("echo_form", "POST", "/predictions/echo", query={"kind": "x"},
             headers={"X-Trace": "form"},
             form=(("note", "hi"), ("file", ("f.bin", b"\x00\xffraw", "application/x-raw")))),
        _echo("status", action="status", code="201", phrase="Made"),
        _echo("all_status", action="all_status", code="202"),
        _echo("media_type", action="type", media="text/x-echo"),
        _echo("response_header", action="header", echo="yes"),
        _echo("bytes_answer", action="bytes"),
        _echo("text_answer", action="text"),
        _echo("refuse_422", action="refuse", code="422"),
        _echo("refuse_507", action="refuse", code="507"),
        _echo("raise", action="raise"),
        _echo("wrong_count", action="wrong_count"),
        Case("unknown_model", "POST", "/predictions/nope", body=b"x"),
        Case("models_list", "GET", "/models", listener="management"),
        Case("describe", "GET", "/models/digits", listener="management"),
        Case("describe_unknown", "GET", "/models/nope", listener="management"),
        Case("register", "POST", "/models", listener="management",
             query={"url": "echo.mar", "model_name": "echo2", "initial_workers": "1",
                    "synchronous": "true"}),
        Case("register_again", "POST", "/models", listener="management",
             query={"url": "echo.mar", "model_name": "echo2", "initial_workers": "1",
                    "synchronous": "true"}),
        Case("register_missing_archive", "POST", "/models", listener="management",
             query={"url": "missing.mar"}),
        Case("register_without_url", "POST", "/models", listener="management"),
        Case("models_list_registered", "GET", "/models", listener="management"),
        Case("predict_registered", "POST", "/predictions/echo2",
             headers={"Content-Type": "application/json"}, body=b'{"n": 1}'),
        Case("scale", "PUT", "/models/echo2", listener="management",
             query={"min_worker": "2", "synchronous": "true"}),
        Case("describe_scaled", "GET", "/models/echo2", listener="management"),
        Case("scale_bad_number", "PUT", "/models/echo2", listener="management",
             query={"min_worker": "two"}),
        Case("scale_unknown", "PUT", "/models/nope", listener="management",
             query={"min_worker": "1"}),
        Case("unregister", "DELETE", "/models/echo2", listener="management"),
        Case("unregister_unknown", "DELETE", "/models/nope", listener="management"),
        Case("predict_unregistered", "POST", "/predictions/echo2", body=b"x"),
    ]


def send(case: Case, urls: dict[str, str], headers: dict[str, str] | None = None,
         timeout_s: float = 60.0) -> dict[str, Any]:
    """Make the call; what came back, written down as the recordings hold it."""
    files = [(name, value if isinstance(value, tuple) else (None, value))
             for name, value in case.form] or None
    response = requests.request(case.method, urls[case.listener] + case.path,
                                params=case.query or None, data=case.body, files=files,
                                headers={**case.headers, **(headers or {})}, timeout=timeout_s)
    return answer(response)


def answer(response: requests.Response) -> dict[str, Any]:
    shown = {name: response.headers[name] for name in SHOWN_HEADERS
             if name in response.headers}
    try:
        body: Any = {"json": masked(json.loads(response.content))}
    except ValueError:
        try:
            body = {"text": response.content.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"base64": base64.b64encode(response.content).decode()}
    return {"status": response.status_code, "headers": shown, "body": body}


def masked(value: Any) -> Any:
    """The value with every volatile field's value replaced by its type's name, and a
    multipart boundary (random per request) by a placeholder."""
    if isinstance(value, dict):
        return {k: (f"<{type(v).__name__}>" if k in VOLATILE_KEYS else masked(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return _BOUNDARY.sub("boundary=<boundary>", value)
    return value


def build_store(store: Path, archiver: Path) -> None:
    """digits.mar and echo.mar, made by the real model-archiver from the template folders."""
    build_template_mar("digits", WEIGHTS, store, archiver)
    archive_folder("echo", "echo_service:handle", TEMPLATE / "echo", store, archiver)


def build_template_mar(name: str, weights: Path, store: Path, archiver: Path) -> Path:
    """`name`.mar: the template's vision service on the weights, signature and synset of
    an MMS 0.4 archive whose checkpoint prefix is `name`."""
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / name
        shutil.copytree(TEMPLATE / "vision", source,
                        ignore=shutil.ignore_patterns("__pycache__"))
        extract_weights(weights, source)
        return archive_folder(name, "mxnet_vision_service:handle", source, store, archiver)


def extract_weights(model_archive: Path, folder: Path) -> None:
    """An MMS 0.4 archive's symbol, parameters, signature and synset into `folder`, without
    its manifest and service."""
    import zipfile

    with zipfile.ZipFile(model_archive) as archive:
        for entry in archive.namelist():
            if entry not in ("MANIFEST.json", "mxnet_vision_service.py"):
                archive.extract(entry, folder)


def archive_folder(name: str, handler: str, folder: Path, store: Path, archiver: Path) -> Path:
    """`store`/`name`.mar of what `folder` holds, made by the real model-archiver with
    `handler` as the manifest's model.handler."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / name
        shutil.copytree(folder, source, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([str(archiver), "--model-name", name, "--model-path", str(source),
                        "--handler", handler, "--export-path", str(store), "-f"],
                       check=True, capture_output=True, timeout=120)
    return store / f"{name}.mar"
