"""A default start is safe on a shared host: another local user (`nobody`, through
runuser) cannot manage models, read the token or plant a run directory; a web page cannot
reach the management API through DNS rebinding; no child process's environment holds the
token. Each attack is made against the real stack, which then still serves."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.server_harness import ROOT, Server, eventually, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                                reason="needs root to act as another local user")


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True,
                          text=True, timeout=60)


def curl_status(*args: str) -> str:
    return as_nobody("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args).stdout


@pytest.fixture(scope="module")
def default_server(sample_models):
    with Server([f"digits={sample_models['digits']}"], token_file=False) as server:
        yield server


@pytest.fixture(scope="module")
def token_path(default_server) -> Path:
    # The launcher prints it once it saw /ping ready.
    match = eventually(lambda: re.search(r"management API on \S+, token in (\S+)",
                                         default_server.log_text()), 30, "token path logged")
    return Path(match.group(1))


def test_the_generated_token_is_private_and_only_its_path_is_logged(default_server, token_path):
    token = token_path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
    assert token not in default_server.log_text()
    assert as_nobody("cat", str(token_path)).returncode != 0


def test_another_local_user_cannot_manage_models(default_server, token_path, tmp_path):
    evil = tmp_path / "x.model"
    shutil.copy(ROOT / "sample-models" / "noop.model", evil)
    evil.chmod(0o644)
    admin = default_server.admin
    assert curl_status(f"{admin}/models") == "401"
    assert curl_status("-X", "POST", "-H", "Content-Type: application/json", "-d",
                       f'{{"path": "{evil}"}}', f"{admin}/models") == "401"
    assert curl_status("-H", "Authorization: Bearer guess-guess-guess-guess",
                       f"{admin}/metrics") == "401"
    # Even with the token, registering (which runs the archive's code) is off by default.
    auth = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    refused = requests.post(f"{admin}/models", json={"path": str(evil)}, headers=auth,
                            timeout=10)
    assert refused.status_code == 403 and refused.json()["type"] == "Forbidden"
    assert requests.delete(f"{admin}/models/digits", headers=auth,
                           timeout=10).status_code == 403
    assert requests.get(f"{admin}/models", headers=auth, timeout=10).status_code == 200
    assert requests.get(default_server.url + "/ping", timeout=10).status_code == 200


def test_dns_rebinding_and_cross_site_requests_are_refused(default_server, token_path):
    auth = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    evil_host = f"evil.example:{default_server.management_port}"
    rebound = requests.get(f"{default_server.admin}/models", timeout=10,
                           headers={**auth, "Host": evil_host})
    assert rebound.status_code == 403 and rebound.json()["type"] == "Forbidden"
    cross = requests.get(f"{default_server.admin}/models", timeout=10,
                         headers={**auth, "Origin": "http://evil.example"})
    assert cross.status_code == 403


def test_no_process_environment_holds_the_token(default_server, token_path):
    token = token_path.read_text().strip().encode()
    pids = default_server.processes("")
    assert len(pids) >= 4  # broker, fork server, worker, gunicorn and its frontends
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert token not in environ and b"MXSERVE_MANAGEMENT_TOKEN=" not in environ, pid


def test_a_token_given_in_the_environment_stays_out_of_children(sample_models):
    token = "environment-token-0123456789"
    with Server([f"digits={sample_models['digits']}"], token_file=False,
                env={"MXSERVE_MANAGEMENT_TOKEN": token}) as server:
        assert requests.get(f"{server.admin}/models", timeout=10, headers={
            "Authorization": f"Bearer {token}"}).status_code == 200
        for pid in server.processes(""):
            assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid


def test_config_show_masks_the_token_and_help_works():
    env = dict(os.environ, MXSERVE_MANAGEMENT_TOKEN="shown-nowhere-123456")
    shown = subprocess.run([sys.executable, "-m", "mxserve.instance.cli", "config", "--show"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "shown-nowhere" not in shown.stdout
    assert re.search(r'^management_token += "\*+"', shown.stdout, re.M)
    for command in (["start", "-h"], ["config", "-h"], ["frontend", "-h"]):
        helped = subprocess.run([sys.executable, "-m", "mxserve.instance.cli", *command], env=env,
                                capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and "--management-token-file" in helped.stdout, command
        assert "--management-token " not in helped.stdout


def test_a_run_directory_planted_by_another_user_is_refused(sample_models, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)  # nobody's, as if it had made it first
    (tmp_path / "target").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    env = dict(os.environ)
    for run_dir, why in ((planted, "another user"), (link, "symlink"), (open_dir, "open to")):
        started = subprocess.run(
            [sys.executable, "-m", "mxserve.instance.cli", "start", "--models",
             f"digits={sample_models['digits']}", "--run-dir", str(run_dir), "--port",
             str(free_port())], env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 2 and why in started.stderr, started.stderr
    script = str(ROOT / "scripts" / "start_cluster.sh")
    for run_dir in (planted, link, open_dir):
        refused = subprocess.run([script, "start", "--models", "x=y"], capture_output=True,
                                 text=True, timeout=60,
                                 env=dict(env, MXSERVE_RUN_DIR=str(run_dir)))
        assert refused.returncode == 2 and "mode 700" in refused.stderr, refused.stderr
        assert not (run_dir / "settings.env").exists()
    own = tmp_path / "own"
    refused = subprocess.run([script, "start", "--management-token", "secret-secret-1234"],
                             capture_output=True, text=True, timeout=60,
                             env=dict(env, MXSERVE_RUN_DIR=str(own)))
    assert refused.returncode == 2 and "--management-token-file" in refused.stderr
    assert "secret-secret-1234" not in (own / "settings.env").read_text(errors="replace") \
        if (own / "settings.env").exists() else True
