"""The wheel holds only mxserve's own names and every package of the tree. `pip install .`
into a fresh virtual environment, then `mxserve start`, is test_image_install.py: the image's
install script does exactly that."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.server_harness import ROOT

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
