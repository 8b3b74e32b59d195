"""examples/embed_digits.py, run as a real process: the embedding API end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import requests
from openapi_spec_validator import validate

from mxserve.common.proctree import cmdline, descendants
from tests.server_harness import ROOT, free_port, wait_gone, wait_healthy


def test_example_serves_its_endpoint_on_every_frontend_process_and_predicts(sample_models):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "examples/embed_digits.py", "--port", str(port),
         "--archive", str(sample_models["digits"])],
        cwd=ROOT, env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, process, 120, lambda: process.stdout.read().decode())
        # gunicorn's arbiter is a fork of the example; its children are the gunicorn workers
        # (gunicorn re-titles them "gunicorn: ..." with setproctitle).
        tree = descendants(process.pid)
        forks = {pid for pid in tree if "embed_digits.py" in cmdline(pid)
                 or cmdline(pid).startswith("gunicorn:")}
        arbiters = {pid for pid in forks if _parent(pid) == process.pid}
        gunicorn_workers = {pid for pid in forks if _parent(pid) in arbiters}
        assert len(arbiters) == 1 and len(gunicorn_workers) == 2, {p: cmdline(p) for p in tree}

        # The custom endpoint answers on every gunicorn process (new connection each time,
        # so the kernel spreads them over the processes accepting on the socket).
        seen = set()
        for _ in range(200):
            response = requests.get(url + "/digits/labels", timeout=10,
                                    headers={"Connection": "close"})
            assert response.status_code == 200
            assert response.json()["labels"] == [str(d) for d in range(10)]
            seen.add(response.json()["served_by"])
            if seen == gunicorn_workers:
                break
        assert seen == gunicorn_workers

        one = requests.get(url + "/digits/labels", params={"digit": "7"}, timeout=10)
        assert one.json()["labels"] == ["7"]
        bad = requests.get(url + "/digits/labels", params={"digit": "x"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["type"] == "InvalidInput"

        spec = requests.get(url + "/api-description", timeout=10).json()["description"]
        validate(spec)
        assert spec["paths"]["/digits/labels"]["get"]["operationId"] == "digits_labels"
        assert spec["paths"]["/digits/predict"]["post"]["operationId"] == "digits_predict"

        heldout = sample_models["digits"].parent / "digits_heldout"
        labels = json.loads((heldout / "labels.json").read_text())
        names = sorted(labels)[:20]
        correct = 0
        for name in names:
            answer = requests.post(url + "/digits/predict", timeout=30,
                                   files={"data": (heldout / name).read_bytes()}).json()
            assert set(answer["prediction"]) == {"digit", "probability"}  # the custom service
            correct += answer["prediction"]["digit"] == str(labels[name])
        assert correct >= 18
    finally:
        tree = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert wait_gone(tree, 10) == set()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
