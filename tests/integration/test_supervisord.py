"""The production layout for real: scripts/start_cluster.sh runs supervisord (from PyPI)
with the broker and gunicorn as two programs, --gpus 0 so the workers are CPU workers."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests
import tritonclient.grpc as triton_grpc

from mxserve.common.proctree import alive
from tests.server_harness import ROOT, eventually, free_port

SCRIPT = str(ROOT / "scripts" / "start_cluster.sh")


@pytest.fixture
def cluster(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, MXSERVE_RUN_DIR=str(run_dir), MXSERVE_PYTHON=sys.executable,
               OMP_NUM_THREADS="1")

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    run.run_dir = run_dir
    try:
        yield run
    finally:
        run("stop", timeout=120)


def pid_of(status: str, program: str) -> int:
    return int(re.search(rf"^{program}\s+RUNNING\s+pid (\d+)", status, re.M).group(1))


def test_start_status_kill_restart_and_stop(cluster, sample_models):
    port, grpc_port = free_port(), free_port()
    started = cluster("start", "--gpus", "0", "--models", f"digits={sample_models['digits']}",
                      "--port", str(port), "--grpc-port", str(grpc_port), "--wait", "150")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"serving on http://127.0.0.1:{port}" in started.stdout
    url = f"http://127.0.0.1:{port}"
    image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
    response = requests.post(f"{url}/digits/predict", files={"data": image}, timeout=30)
    assert response.json()["prediction"][0][0]["class"] == "0"

    status = cluster("status").stdout
    broker, frontend = pid_of(status, "broker"), pid_of(status, "frontend")
    pid_of(status, "grpc")  # the KServe v2 gRPC listener runs as its own program
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as grpc_client:
        assert eventually(lambda: grpc_client.is_model_ready("digits"), 30, "gRPC ready")
    os.kill(broker, signal.SIGKILL)  # a crash: supervisord restarts it
    eventually(lambda: requests.post(f"{url}/digits/predict", files={"data": image},
                                     timeout=10).status_code == 200, 30, "service after the kill")
    status = cluster("status").stdout
    assert pid_of(status, "broker") != broker and pid_of(status, "frontend") == frontend

    restarted = cluster("restart", timeout=240)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200

    supervisord = int((cluster.run_dir / "supervisord.pid").read_text())
    stopped = cluster("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(supervisord)
    assert cluster("status").returncode == 3


def test_bad_configuration_is_refused_before_anything_starts(cluster, sample_models):
    done = cluster("start", "--models", f"digits={sample_models['digits']}", "--port", "0")
    assert done.returncode == 2 and "port" in done.stderr
    assert not (cluster.run_dir / "supervisord.pid").exists()


def test_a_broker_exiting_with_bad_config_is_not_restart_looped(cluster, sample_models):
    done = cluster("start", "--models", f"digits={sample_models['digits']}", "--port",
                   str(free_port()), "--broker-frontend", "tcp://256.0.0.1:1", "--wait", "60")
    assert done.returncode == 1, done.stdout + done.stderr
    # EXITED is supervisord's "not restarting": a loop would show BACKOFF, then FATAL.
    def exited() -> str | None:
        status = cluster("status").stdout
        return status if re.search(r"^broker\s+EXITED", status, re.M) else None

    status = eventually(exited, 30, "broker EXITED")
    assert "FATAL" not in status and "BACKOFF" not in status, status
