"""mxserve start as a process tree: clean stops, no orphans, exit codes that mean something."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from mxserve.common.errors import EXIT_BAD_CONFIG, EXIT_MODEL_LOAD
from mxserve.common.proctree import descendants
from tests.server_harness import ROOT, Server, wait_gone

FAULTY = ROOT / "tests" / "data" / "services" / "faulty.py"


def test_sigterm_turns_readiness_off_first_then_finishes_in_flight_requests(sample_models):
    # A model whose every request takes 0.1 s (tests/data/services/faulty.py), one at a
    # time: 16 requests are 1.6 s of work whatever this machine's speed. (With resnet18 the
    # work left at the signal depended on the machine: on a fast one nothing was left.)
    with Server([f"slow={sample_models['noop']}"], "--services", f"slow={FAULTY}",
                "--max-batch-size", "1") as server:
        tree = descendants(server.process.pid)
        assert len(tree) >= 5  # broker, worker, gunicorn master and its 2 workers

        def call(_):
            return requests.post(f"{server.url}/slow/predict",
                                 data={"data": "[[0.1, 0, 0, 0]]"}, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(call, i) for i in range(16)]
            time.sleep(0.5)  # all 16 accepted and queued: about a second of work remains
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # A load balancer's health check sees "unready" while the queue still drains.
            while True:
                ping = requests.get(server.url + "/ping", timeout=5)
                if ping.status_code == 503:
                    break
                assert time.monotonic() - signalled < 0.5, "still ready 0.5 s after SIGTERM"
            assert ping.json()["reason"] == "shutting down"
            ready = requests.get(server.url + "/readyz", timeout=5)  # what a kubelet reads
            assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
            assert requests.get(server.url + "/livez", timeout=5).status_code == 200
            late = requests.post(f"{server.url}/slow/predict", data={"data": "[[0, 0, 0, 0]]"},
                                 timeout=10)
            assert late.status_code == 503 and late.headers["Retry-After"]
            assert not all(f.done() for f in futures), "nothing was in flight any more"
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 16, statuses
        assert server.process.wait(60) == 0
        assert wait_gone(tree, 10) == set(), "processes outlived mxserve start"


def test_sigterm_drain_is_bounded_by_drain_timeout(sample_models):
    """A request still running at the drain deadline is answered 503, and everything exits
    within drain_timeout_s + the stop margins, not when the model finally returns."""
    with Server([f"faulty={sample_models['noop']}"], "--services", f"faulty={FAULTY}",
                "--drain-timeout-s", "2", "--request-timeout-s", "25") as server:
        tree = descendants(server.process.pid)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(requests.post, f"{server.url}/faulty/predict",
                               data={"data": "[[20, 0, 0, 0]]"}, timeout=60)
            time.sleep(1.0)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            response = slow.result()
            answered_s = time.monotonic() - signalled
        assert response.status_code == 503 and "shutting down" in response.json()["message"]
        assert server.process.wait(30) == 0
        stopped_s = time.monotonic() - signalled
        assert wait_gone(tree, 10) == set(), "processes outlived mxserve start"
        print(f"drain 2 s: in-flight request answered 503 after {answered_s:.1f}s, "
              f"stopped after {stopped_s:.1f}s")
        # Bound: the broker's drain (2) + its workers' stop (3) + gunicorn's graceful stop (up
        # to the drain again, 2) + process start-up/exit slack.
        assert 1.5 < answered_s < 4.0 and stopped_s < 2 + 3 + 2 + 3


def test_sigkill_of_the_launcher_takes_every_child_down(sample_models):
    with Server([f"digits={sample_models['digits']}"]) as server:
        tree = descendants(server.process.pid)
        server.process.kill()
        server.process.wait(10)
        assert wait_gone(tree, 20) == set(), "children survived their parent's SIGKILL"


def run_start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mxserve.instance.cli", "start", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def test_bad_configuration_exits_2_with_a_message(sample_models):
    done = run_start("--models", f"digits={sample_models['digits']}", "--port", "0")
    assert done.returncode == EXIT_BAD_CONFIG and "port" in done.stderr
    done = run_start("--models", "nope=/does/not/exist.model")
    assert done.returncode == EXIT_BAD_CONFIG and "not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_loadable_model_exits_3(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a zip")
    from tests.server_harness import free_port

    done = run_start("--models", f"bad={bad}", "--port", str(free_port()))
    assert done.returncode == EXIT_MODEL_LOAD, done.stderr[-2000:]
    assert "not a valid zip archive" in done.stderr


def test_models_that_cannot_load_are_failed_with_their_reason_and_the_others_serve(
        sample_models, tmp_path, reference):
    """An archive that is not a zip, a signature the symbol cannot take (caught by the
    warm-up forward), parameters MXNet cannot read (its own message, not its traceback
    header), a custom service that raises on import, and one that never finishes loading
    (model_load_timeout_s): each fails alone, and digits serves beside them."""
    import json
    import zipfile

    mismatched = tmp_path / "mismatched"
    with zipfile.ZipFile(sample_models["digits"]) as archive:
        archive.extractall(mismatched)
    signature = json.loads((mismatched / "signature.json").read_text())
    signature["inputs"][0]["data_shape"] = [0, 1, 32, 32]  # the symbol takes 3 channels
    (mismatched / "signature.json").write_text(json.dumps(signature))
    corrupt = tmp_path / "corrupt"
    with zipfile.ZipFile(sample_models["digits"]) as archive:
        archive.extractall(corrupt)
    [params] = corrupt.glob("*.params")
    params.write_bytes(b"not an NDArray file" * 64)
    not_a_zip = tmp_path / "bad.model"
    not_a_zip.write_bytes(b"not a zip")
    services = ROOT / "tests" / "data" / "services"
    with Server([f"digits={sample_models['digits']}", f"bad={not_a_zip}",
                 f"mismatched={mismatched}", f"corrupt={corrupt}",
                 f"import_error={sample_models['noop']}", f"hangs={sample_models['noop']}"],
                "--services", f"import_error={services / 'broken.py'}",
                f"hangs={services / 'hangs_at_load.py'}", "--model-load-timeout-s", "8",
                until="settled") as server:
        ping = requests.get(server.url + "/ping", timeout=5)
        assert ping.status_code == 503 and ping.json()["health"] == "unhealthy!"
        assert ping.json()["models"] == {"digits": "ready", "bad": "failed",
                                         "mismatched": "failed", "corrupt": "failed",
                                         "import_error": "failed", "hangs": "failed"}
        errors = {name: m["error"] for name, m in server.catalog()["models"].items()}
        assert "shape" in errors["mismatched"].lower(), errors
        assert "Invalid NDArray file format" in errors["corrupt"], errors
        assert "Traceback" not in errors["corrupt"], errors
        assert "this module fails at import" in errors["import_error"], errors
        assert errors["hangs"] == "the model did not finish loading in 8s"
        assert "not a valid zip archive" in errors["bad"], errors
        image = (reference / "images" / "digit_5.jpg").read_bytes()
        ok = requests.post(f"{server.url}/digits/predict", files={"data": image}, timeout=30)
        assert ok.status_code == 200
        never_served = requests.post(f"{server.url}/bad/predict", files={"data": image},
                                     timeout=30)
        assert never_served.status_code == 404  # it has no signature: it was never served
        refused = requests.post(f"{server.url}/mismatched/predict", files={"data": image},
                                timeout=30)
        # failed for good: a non-retryable error, no Retry-After
        assert refused.status_code == 500 and refused.json()["type"] == "ModelFailed"
        assert "shape" in refused.json()["message"].lower()
        assert "Retry-After" not in refused.headers
        ready = requests.get(server.url + "/readyz", timeout=5)  # every model was required
        assert ready.status_code == 503 and ready.json()["waiting_for"]["bad"] == "failed"
        time.sleep(1.0)  # twice the first restart backoff: a loop would have restarted it
        assert server.catalog()["models"]["hangs"]["restarts"] == 0
        assert len(server.processes("worker --archive")) == 1
        print(errors)
