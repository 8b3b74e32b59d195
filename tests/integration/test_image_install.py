"""The container image's install, proved on the host: scripts/install_image.sh (the one
install step of both Dockerfiles) builds a fresh virtual environment from a copy of the
checkout, and the `mxserve` in it serves with the image's own ENV, its HEALTHCHECK command
answering. Only the listen address (the container's own network namespace) and the mounted
store are replaced. The dependencies come from the package index, as in `docker build`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.deploy_files import image_env
from tests.server_harness import ROOT, eventually, free_port

SOURCE = ("pyproject.toml", "README.md", "LICENSE", "common", "frontend", "worker", "instance")


def test_the_install_script_builds_an_environment_that_serves_as_the_image(
        tmp_path, sample_models):
    source = tmp_path / "src"  # what the Dockerfile copies, and nothing else
    source.mkdir()
    for name in SOURCE:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    prefix = tmp_path / "opt-mxserve"
    installed = subprocess.run(
        [str(ROOT / "scripts" / "install_image.sh"), "python", str(prefix), str(source)],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
        timeout=540)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "mxserve 0.1.0" in installed.stdout and "mxnet 1.9.1" in installed.stdout
    refused = subprocess.run([str(ROOT / "scripts" / "install_image.sh"), "nonsense"],
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 2 and "usage" in refused.stderr

    store = tmp_path / "models"
    store.mkdir()
    shutil.copy(sample_models["digits"], store / "digits.model")
    port = free_port()
    environment = {key: value for key, value in image_env("Dockerfile").items()
                   if key != "PATH"}
    environment.update(PATH=f"{prefix / 'bin'}:/usr/bin:/bin", HOME=str(tmp_path),
                       MXSERVE_HOST="127.0.0.1", MXSERVE_PORT=str(port),
                       MXSERVE_GRPC_PORT=str(free_port()),
                       MXSERVE_MANAGEMENT_PORT=str(free_port()), MXSERVE_MODEL_STORE=str(store))
    log = tmp_path / "container.log"

    def probe(endpoint: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mxserve", "probe", endpoint], env=environment,
                              capture_output=True, text=True, timeout=30)

    assert probe("livez").returncode == 1  # nothing listens yet: unhealthy, not a crash
    with open(log, "wb") as output:
        # ENTRYPOINT ["mxserve"], CMD ["start"], from the installed environment only.
        process = subprocess.Popen(["mxserve", "start"], env=environment, cwd=tmp_path,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: process.poll() is None and probe("readyz").returncode == 0, 120,
                   "readyz through `mxserve probe`", every_s=0.5)
        assert process.poll() is None, log.read_text()[-3000:]
        health = probe("livez")
        assert health.returncode == 0 and '"live": true' in health.stdout.replace(
            '"live":true', '"live": true')
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        answer = requests.post(f"http://127.0.0.1:{port}/digits/predict",
                               files={"data": image}, timeout=30)
        assert answer.status_code == 200 and answer.json()["prediction"][0][0]["class"] == "0"
        assert Path(process.args[0]).name == "mxserve"
        assert "/opt-mxserve/" in subprocess.run(
            ["python", "-c", "import mxserve.instance.cli as m; print(m.__file__)"],
            env=environment, capture_output=True, text=True, cwd=tmp_path).stdout
    finally:
        process.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
        assert process.wait(60) == 0, log.read_text()[-3000:]
