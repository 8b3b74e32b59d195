"""scripts/loadtest.sh against the real server, with wrk and with ab: a one-line summary
whose numbers come from a real run (short and bounded here)."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.server_harness import ROOT


@pytest.mark.parametrize("tool, bound", [("wrk", ["-d", "2"]), ("ab", ["-n", "60"])])
def test_loadtest_prints_a_summary_of_a_real_run(server, sample_models, tool, bound):
    image = sample_models["digits"].parent / "examples" / "digit_0.jpg"
    done = subprocess.run([str(ROOT / "scripts" / "loadtest.sh"), server.url, "digits",
                           str(image), "-c", "4", "--tool", tool, *bound],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    match = re.fullmatch(rf"{tool} digits c=4: ([\d.]+) req/s, p50 [\d.]+ ms, p90 [\d.]+ ms, "
                         rf"p99 [\d.]+ ms, non-2xx (\d+), (socket errors|failed) (\d+)", line)
    assert match, line
    assert float(match.group(1)) > 0 and match.group(2) == "0" and match.group(4) == "0"


def test_loadtest_json_inputs_and_bad_arguments(server, sample_models):
    tensor = sample_models["digits"].parent / "examples" / "digit_0.json"
    done = subprocess.run([str(ROOT / "scripts" / "loadtest.sh"), server.url, "digits_mlp",
                           str(tensor), "--text", "-c", "2", "-d", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "non-2xx 0" in done.stdout, done.stdout + done.stderr
    usage = subprocess.run([str(ROOT / "scripts" / "loadtest.sh")], capture_output=True,
                           text=True, timeout=10)
    assert usage.returncode == 2 and "loadtest.sh URL MODEL FILE" in usage.stdout
