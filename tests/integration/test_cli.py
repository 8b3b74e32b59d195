"""The command line never crashes: every subcommand's -h, --version, and a port that is
already taken refused with its name and exit 2 before any model loads."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.server_harness import ROOT, free_port

ENV = dict(os.environ)


def mxserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mxserve.instance.cli", *args], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["", "start", "config", "frontend", "broker", "worker",
                                     "export", "nginx-conf", "probe", "check-manifests"])
def test_help_of_every_subcommand(command):
    done = mxserve(*command.split(), "-h")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "Traceback" not in done.stderr


def test_version():
    done = mxserve("--version")
    assert done.returncode == 0 and done.stdout.startswith("mxserve ")


@pytest.mark.parametrize("which", ["--port", "--management-port", "--grpc-port"])
def test_a_port_in_use_is_refused_before_any_model_loads(sample_models, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--management-port": str(free_port()),
                 "--grpc-port": str(free_port()), which: str(port)}
        done = mxserve("start", "--models", f"digits={sample_models['digits']}",
                       *[arg for pair in ports.items() for arg in pair])
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(port) in done.stderr and "Traceback" not in done.stderr
    assert "worker" not in done.stderr  # nothing was started


def test_a_run_directory_too_deep_for_unix_sockets_is_refused_before_anything_starts(
        sample_models, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "mxserve.instance.cli", "start", "--port", str(free_port()),
         "--models", f"digits={sample_models['digits']}"], env=dict(ENV, TMPDIR=str(deep)),
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "too long for its unix sockets" in done.stderr and "Traceback" not in done.stderr
    assert not list(deep.iterdir())  # the refused run directory is removed again


def test_check_manifests_and_probe_refuse_bad_input_without_a_traceback(tmp_path):
    garbage = tmp_path / "rendered.yaml"
    garbage.write_text("kind: [unclosed\n")
    drifted = tmp_path / "drifted.yaml"
    drifted.write_text("kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {"
                       "containers: [{name: c, command: [python], args: [app.py]}]}}}\n")
    for args in (["check-manifests", str(garbage)],
                 ["check-manifests", str(tmp_path / "missing.yaml")],
                 ["check-manifests", str(garbage.parent / "drifted.yaml"), "--adapter-rules",
                  str(tmp_path / "none.yaml")]):
        done = mxserve(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "error:" in done.stderr and "Traceback" not in done.stderr
    done = mxserve("check-manifests", str(drifted))
    assert done.returncode == 1 and "not `mxserve start`" in done.stdout
    bad_env = dict(ENV, MXSERVE_PORT="not-a-port")
    probe = subprocess.run([sys.executable, "-m", "mxserve.instance.cli", "probe", "livez"],
                           env=bad_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 2 and "MXSERVE_PORT" in probe.stderr
