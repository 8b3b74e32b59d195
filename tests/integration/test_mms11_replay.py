"""MMS 1.1.11 is the oracle: every answer it gave to scripts/mms11_cases.py's calls
(recorded by scripts/record_mms11.py into tests/data/mms11/recorded.json) is replayed
against mxserve serving the same archives, built by the same model-archiver, and must
match, but for the differences kept on purpose. Each of those is named in DIFFERENCES,
checked as narrowly as it is stated, and listed in docs/migrating.md's table."""
from __future__ import annotations

import json

import mms11_cases
import pytest

from tests.conftest import ROOT, template_store
from tests.server_harness import Server

# Each difference by its name in docs/migrating.md's table.
DIFFERENCES = {
    "content-type": "a handler's answer always names its media type",
    "header-case": "request headers match in any case",
    "error-detail": "error bodies carry mxserve's message and the request id",
    "handler-failure": "a handler that raises or miscounts is 500, not 503",
    "refusal-type": "a PredictionException's type says whose fault it is",
    "bad-number": "a malformed management parameter is 400, not ignored",
    "describe-extra": "describe adds mxserve's fields; maxBatchDelay is mxserve's default",
    "ping": "/ping keeps MMS 0.4's body",
}
STATUS = {"echo_raise": ("handler-failure", 500), "echo_wrong_count": ("handler-failure", 500),
          "scale_bad_number": ("bad-number", 400)}
REFUSALS = {"echo_refuse_422": "InvalidInput", "echo_refuse_507": "ModelError"}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(mms11_cases.RECORDINGS.read_text())["answers"]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict:
    """mxserve's answer to every case, made in order (registrations change later ones)."""
    store = template_store(tmp_path_factory.mktemp("mms11"))
    models = [f"{name}={file}" for name, file in mms11_cases.MODELS.items()]
    with Server(models, "--model-store", str(store), "--enable-model-api",
                "--workers-per-model", "1") as server:
        urls = {"inference": server.url, "management": server.admin}
        return {case.name: mms11_cases.send(case, urls, server.admin_headers
                                            if case.listener == "management" else {})
                for case in mms11_cases.cases()}


def test_the_recordings_cover_every_case_and_what_the_issue_asks(recorded):
    names = [case.name for case in mms11_cases.cases()]
    assert sorted(recorded) == sorted(names), "cases changed: re-run scripts/record_mms11.py"
    for needed in ("register", "describe", "scale", "unregister", "register_missing_archive",
                   "echo_response_header", "echo_media_type", "echo_status", "digits_raw_0"):
        assert needed in recorded


@pytest.mark.parametrize("case", [case.name for case in mms11_cases.cases()])
def test_mxserve_answers_as_mms_1_1_did(recorded, replayed, case):
    want, got = recorded[case], replayed[case]
    expect_same(case, want, got)


def expect_same(case: str, want: dict, got: dict) -> None:
    kept, status = STATUS.get(case, (None, want["status"]))
    assert got["status"] == status, (case, got)
    want_headers, got_headers = dict(want["headers"]), dict(got["headers"])
    if "content-type" not in want_headers:  # "content-type"
        assert got_headers.pop("content-type", "")
    assert got_headers == want_headers, case
    body, ours = want["body"], got["body"]
    if kept == "bad-number":
        assert is_error(ours) and ours["json"]["type"] == "BadRequestException"
        assert "min_worker" in ours["json"]["message"]
    elif case == "ping":  # "ping"
        assert body == {"json": {"status": "Healthy"}}
        assert ours == {"json": {"health": "healthy!"}}
    elif is_error(body):
        assert is_error(ours), (case, ours)
        # "error-detail": same code and type; mxserve's own message, and the request id
        assert ours["json"]["code"] == got["status"]
        assert ours["json"]["type"] == REFUSALS.get(case, body["json"]["type"])
        assert ours["json"].get("request_id", "<str>") == "<str>"
        if case not in STATUS and case not in REFUSALS:
            assert ours["json"]["message"], case
    elif case.startswith("describe"):  # "describe-extra"
        mine = dict(ours["json"])
        assert set(body["json"]) <= set(mine)
        assert mine.pop("maxBatchDelay") == 0.0 and body["json"]["maxBatchDelay"] == 100
        theirs = {k: v for k, v in body["json"].items() if k != "maxBatchDelay"}
        workers = [{k: w[k] for k in theirs["workers"][0]} for w in mine["workers"]]
        assert {**{k: mine[k] for k in theirs}, "workers": workers} == theirs
    elif "json" in body and isinstance(body["json"], dict) and "headers" in body["json"]:
        # "header-case": the lower-case lookup finds the header MMS 1.1 found only as sent
        expected = json.loads(json.dumps(body["json"]))
        expected["headers"]["x-trace"] = expected["headers"]["X-Trace"]
        assert ours["json"] == expected
    else:
        assert close(ours, body), case


def is_error(body: dict) -> bool:
    value = body.get("json")
    return isinstance(value, dict) and {"code", "type", "message"} <= set(value)


def close(a, b) -> bool:
    """Equal, floats within 1e-5 (the same MXNet on another CPU)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


def test_every_kept_difference_is_in_the_migration_guide():
    guide = (ROOT / "docs" / "migrating.md").read_text()
    for name in DIFFERENCES:
        assert f"`{name}`" in guide, name
