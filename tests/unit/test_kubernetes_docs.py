"""docs/kubernetes.md's commands: those that run without a cluster are run (render, check,
create a Secret client-side); those that need a cluster or a container runtime have what
they name checked (the overlay renders, the resource exists, the tag is the overlay's, the
metric is served). A command of a kind this test does not know fails it, so the guide
carries no unchecked command."""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mxserve.instance.manifest_check import check
from tests.deploy_files import ADAPTER_RULES, KUBERNETES, ROOT, adapter_rules, kustomize, render

GUIDE = ROOT / "docs" / "kubernetes.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def commands() -> list[str]:
    return [line for block in blocks("sh") for line in block.splitlines() if line.strip()]


def shell(command: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PATH=f"{bin_dir}:"
                                                f"{os.environ['PATH']}"))


@functools.cache
def rendered_cpu() -> list[dict]:
    return render(KUBERNETES / "overlays" / "cpu")


def named(kind: str, name: str) -> bool:
    return any(d["kind"] == kind and d["metadata"]["name"] == name for d in rendered_cpu())


def check_command(command: str) -> None:
    words = shlex.split(command.split("|")[0])
    if words[:2] == ["kubectl", "kustomize"]:
        done = shell(command.replace("kubectl kustomize", shlex.join(kustomize()), 1))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "agree with mxserve's settings" in done.stdout
    elif words[:4] == ["kubectl", "create", "secret", "generic"]:
        volumes = next(d for d in rendered_cpu() if d["kind"] == "Deployment")["spec"][
            "template"]["spec"]["volumes"]
        if shutil.which("kubectl"):
            done = shell(command + " --dry-run=client -o yaml")
            assert done.returncode == 0, done.stderr
            secret = yaml.safe_load(done.stdout)
            name, token = secret["metadata"]["name"], secret["data"]["token"]
        else:  # without kubectl: the name, and the token its command line generates
            literal = next(w for w in words if w.startswith("--from-literal=token="))
            name, token = words[4], shell(f'echo "{literal.split("=", 2)[2]}"').stdout.strip()
        assert name in [v.get("secret", {}).get("secretName") for v in volumes]
        assert len(token) >= 32  # 48 hex characters, or their base64
    elif words[:3] == ["kubectl", "apply", "-k"]:
        assert render(ROOT / words[3])
    elif words[:3] == ["kubectl", "apply", "-f"]:
        assert yaml.safe_load((ROOT / words[3]).read_text())["kind"]
    elif words[:2] == ["docker", "build"]:
        dockerfile = words[words.index("-f") + 1] if "-f" in words else "Dockerfile"
        assert (ROOT / dockerfile).is_file()
        tag = words[words.index("-t") + 1]
        overlay = "gpu" if dockerfile.endswith(".gpu") else "cpu"
        images = {c["image"] for d in render(KUBERNETES / "overlays" / overlay)
                  if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"][
                      "containers"]}
        assert images == {tag}
    elif words[:2] in (["kubectl", "rollout"], ["kubectl", "scale"]):
        target = next(word for word in words if word.startswith("deployment/"))
        assert named("Deployment", target.split("/")[1])
    elif words[:3] == ["kubectl", "get", "hpa"]:
        assert named("HorizontalPodAutoscaler", words[3])
    elif words[:3] == ["kubectl", "get", "--raw"]:
        metric = words[3].rsplit("/", 1)[1]
        assert metric in [rule["name"]["as"] for rule in adapter_rules()["rules"]]
    else:
        pytest.fail(f"docs/kubernetes.md: no check for {command!r}")


@pytest.mark.parametrize("command", commands())
def test_every_command_in_the_guide_is_checked(command):
    check_command(command)


def test_the_guide_names_the_adapter_rules_file_that_exists():
    assert str(ADAPTER_RULES.relative_to(ROOT)) in GUIDE.read_text()


def test_the_new_version_overlay_of_the_guide_renders_and_agrees(tmp_path):
    [example] = blocks("yaml")
    overlay = tmp_path / "my-release"
    overlay.mkdir()
    ours = os.path.relpath(KUBERNETES / "overlays" / "cpu", overlay)
    (overlay / "kustomization.yaml").write_text(
        example.replace("../../deploy/kubernetes/overlays/cpu", ours))
    documents = render(overlay)
    assert check(documents, adapter_rules()) == []
    settings = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    assert settings["MXSERVE_REQUIRED_MODELS"] == "digits"
    assert settings["MXSERVE_MODELS"].split() == ["digits=digits.model",
                                                  "resnet18=resnet18-v2.model"]
    base_name = next(d for d in rendered_cpu() if d["kind"] == "ConfigMap")["metadata"]["name"]
    assert next(
        d for d in documents if d["kind"] == "ConfigMap")["metadata"]["name"] != base_name
