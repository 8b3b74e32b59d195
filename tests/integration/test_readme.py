"""The README's serve command brings up a server that answers the README's curl examples
with the outputs shown there. Set MXSERVE_README_ROOT to run it against another checkout
(scripts/check_fresh_clone.sh does, on a fresh clone)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from tests.server_harness import ROOT as THIS_ROOT
from tests.server_harness import descendants, free_port, wait_gone, wait_healthy

ROOT = Path(os.environ.get("MXSERVE_README_ROOT", THIS_ROOT))


def readme_examples() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- readme-examples: begin -->")[1].split(
        "<!-- readme-examples: end -->")[0]
    lines = [line for line in block.splitlines() if line and not line.startswith("```")]
    return [(lines[i][2:], lines[i + 1]) for i in range(0, len(lines), 2)
            if lines[i].startswith("$ ")]


NOISE = 1e-6  # probabilities below this are float noise: training on 2 threads is not
# bit-reproducible, so a rebuilt sample model orders its ~1e-8 tail classes differently.


def same_answer(got, want) -> bool:
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-3, abs=NOISE)
    if isinstance(want, list) and want and all(isinstance(w, dict) and "probability" in w
                                               for w in want):
        want = [w for w in want if w["probability"] >= NOISE]
        return len(got) >= len(want) and all(same_answer(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        keys = set(want) - {"request_id"}
        return keys == set(got) - {"request_id"} and all(same_answer(got[k], want[k])
                                                         for k in keys)
    if isinstance(want, list):
        return len(got) == len(want) and all(same_answer(g, w) for g, w in zip(got, want))
    return got == want


def test_readme_serve_command_answers_the_readme_examples():
    serve = re.search(r"```sh\n(make serve)\n```", (ROOT / "README.md").read_text()).group(1)
    port = free_port()
    process = subprocess.Popen([*shlex.split(serve), f"PORT={port}"], cwd=ROOT,
                               start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        # A fresh clone installs everything first: allow it 15 minutes.
        wait_healthy(url, process, 900, lambda: process.stdout.read().decode())
        examples = readme_examples()
        assert len(examples) >= 5
        for command, shown in examples:
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, (command, done.stderr)
            assert same_answer(json.loads(done.stdout), json.loads(shown)), (command,
                                                                             done.stdout)
    finally:
        tree = descendants(process.pid)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
        assert wait_gone(tree, 10) == set(), "processes outlived make serve"
