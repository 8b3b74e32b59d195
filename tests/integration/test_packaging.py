"""`pip install .` into a fresh virtual environment, then `mxserve start` from outside the
checkout: the wheel holds only mxserve's own names, every package of the tree, and a server
started from it answers. The dependencies come from this environment (listed on a .pth
line), so the test needs no download; CI's `pip install -e .` resolves the same list."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import requests

from tests.server_harness import ROOT, free_port, wait_healthy

LAYERS = ("common", "frontend", "worker", "instance")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the wheel is made of: an in-tree build/ could carry files
    the checkout no longer has."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, source / layer,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(source)], check=True,
                   timeout=300)
    [built] = out.glob("mxserve-*.whl")
    return built


def test_the_wheel_installs_only_mxserve_names_and_every_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "mxserve", wheel.name.split("-py3")[0] + ".dist-info"}
    packages = {str(init.parent.relative_to(ROOT)) for layer in LAYERS
                for init in (ROOT / layer).rglob("__init__.py")}
    assert {f"mxserve/{package}/__init__.py" for package in packages} <= set(names)
    metadata = zipfile.ZipFile(wheel).read(
        wheel.name.split("-py3")[0] + ".dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: mxnet==1.9.1" in metadata


def test_pip_install_then_mxserve_start_serves(wheel, tmp_path, sample_models, reference):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_path("purelib"))
    where = subprocess.run([str(python), "-c", "import mxserve.instance.cli as m; "
                            "print(m.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                           check=True)
    assert where.stdout.startswith(str(venv))  # the installed copy, not the checkout

    port = free_port()
    log = tmp_path / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(venv / "bin" / "mxserve"), "start", "--port", str(port),
             "--management-port", "0", "--frontend-workers", "1",
             "--models", f"digits={sample_models['digits']}"],
            cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"), stdout=output,
            stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, 120, log.read_text)
        image = (reference / "images" / "digit_3.jpg").read_bytes()
        answer = requests.post(f"http://127.0.0.1:{port}/digits/predict",
                               files={"data": image}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"][0][0]["class"] == "3"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
