"""mxserve under wrk for benchmarks/bench.py and benchmarks/soak.py: a server on a free
port (Stack), the plain Flask baseline, and one wrk run's figures.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from mxserve.common.proctree import cpu_seconds, descendants, pss_bytes  # noqa: E402

LUA = ROOT / "benchmarks" / "multipart.lua"
MIB = 1024 * 1024

# What each benchmarked model is fed: file, form field, file name ("" = text field).
INPUTS = {
    "resnet18": ("examples/china.jpg", "data", "china.jpg"),
    "digits": ("examples/digit_0.jpg", "data", "digit.jpg"),
    "noop": ("examples/noop.json", "data", ""),
}


# -- mxserve under wrk ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """`mxserve start` with one model (and `others`, "name=archive" each), on a free
    port."""

    def __init__(self, name: str, archive: Path, *extra: str, others: tuple[str, ...] = ()
                 ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.management_url = f"http://127.0.0.1:{free_port()}"
        self.token = secrets.token_urlsafe(24)
        self.token_dir = tempfile.mkdtemp(prefix="mxserve-bench-")
        token_file = Path(self.token_dir) / "token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mxserve.instance.cli", "start", "--models", f"{name}={archive}",
             *others,
             "--port", str(self.port), "--log-level", "WARNING",
             "--management-port", self.management_url.rsplit(":", 1)[1],
             "--management-token-file", str(token_file), *extra],
            cwd=ROOT, env=dict(os.environ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(self.url + "/ping", name)
        self._wait_all_workers(name)

    def _wait_all_workers(self, name: str) -> None:
        """/ping is 200 once a model has one ready worker; idle memory is read when all of
        them are (each warms up to its steady size before READY)."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            request = urllib.request.Request(f"{self.management_url}/models/{name}", headers={
                "Authorization": f"Bearer {self.token}"})
            with urllib.request.urlopen(request, timeout=5) as r:
                model = json.loads(r.read())  # one object, as MMS 1.1 describes a model
            if model["ready"] == model["minWorkers"]:
                time.sleep(1.0)  # let start-up settle before idle memory is read
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"not every worker of {name} became ready")

    def _wait_ready(self, url: str, name: str) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"{name} did not become ready")
        time.sleep(1.0)  # let start-up settle before idle memory is read

    def pids(self) -> set[int]:
        return descendants(self.process.pid) | {self.process.pid}

    def pss_mib(self) -> float:
        return sum(pss_bytes(pid) for pid in self.pids()) / MIB

    def catalog(self) -> dict:
        with urllib.request.urlopen(self.url + "/api-description", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        shutil.rmtree(getattr(self, "token_dir", ""), ignore_errors=True)


class PlainFlask(Stack):
    """The overhead baseline: benchmarks/hello_app.py under gunicorn gthread with the
    frontend's process and thread counts, and nothing behind it."""

    def __init__(self) -> None:  # not super().__init__: that would start mxserve
        from mxserve.common.config import load_config

        config = load_config({})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gthread",
             "--workers", str(config.frontend_workers), "--threads",
             str(config.frontend_threads), "--bind", f"127.0.0.1:{self.port}",
             "--log-level", "warning", "benchmarks.hello_app:app"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(self.url + "/ping", "the plain Flask baseline")


WRK_LATENCY = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(stack: Stack, model: str, models_dir: Path, connections: int,
            duration: float, route: tuple[str, Path, dict[str, str]] | None = None) -> dict:
    """`route`: (path, wrk script, its environment) for another request than the model's
    /predict form."""
    input_file, field, filename = INPUTS[model]
    path, script, script_env = route or (f"/{model}/predict", LUA, {
        "BENCH_FILE": str(models_dir / input_file), "BENCH_FIELD": field,
        "BENCH_FILENAME": filename})
    env = dict(os.environ, **script_env)
    pids = stack.pids()
    peak = [stack.pss_mib()]
    stop = threading.Event()

    def sample_memory() -> None:
        while not stop.wait(0.5):
            peak.append(stack.pss_mib())

    sampler = threading.Thread(target=sample_memory, daemon=True)
    cpu_before = cpu_seconds(pids)
    sampler.start()
    done = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{int(duration)}s",
         "--latency", "--timeout", "30s", "-s", str(script), f"{stack.url}{path}"],
        env=env, capture_output=True, text=True, timeout=duration + 60)
    stop.set()
    sampler.join()
    cpu_used = cpu_seconds(pids) - cpu_before
    out = done.stdout
    if done.returncode != 0 or "requests in" not in out:
        raise RuntimeError(f"wrk failed: {done.stderr or out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    latency = {f"p{p}": round(float(v) * UNITS_MS[u], 2) for p, v, u in WRK_LATENCY.findall(out)}
    return {
        "connections": connections,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        **latency,
        "requests": requests,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
        "server_cpu_ms_per_request": round(cpu_used * 1000 / max(requests, 1), 3),
        "peak_pss_mib": round(max(peak), 1),
    }


def alternating(stacks: dict[str, Stack], model: str, models_dir: Path, connections: int,
                rounds: int, seconds: float, rotate: bool = False) -> dict[str, list[dict]]:
    """Each server in turn under wrk, `rounds` times. The servers run side by side (an idle
    one costs nothing), so drift hits all alike. `rotate`: each round starts with the next
    server, so that none always runs first."""
    runs: dict[str, list[dict]] = {label: [] for label in stacks}
    labels = list(stacks)
    for i in range(rounds):
        start = i % len(labels) if rotate else 0
        for label in labels[start:] + labels[:start]:
            runs[label].append(run_wrk(stacks[label], model, models_dir, connections,
                                       seconds))
    return runs


def side_by_side(variants: dict[str, tuple[str, ...]], models_dir: Path, connections: int,
                 rounds: int, seconds: float) -> dict[str, list[dict]]:
    """resnet18 servers with each variant's extra flags, alternating (see `alternating`)."""
    cores = str(os.cpu_count() or 1)
    stacks: dict[str, Stack] = {}
    try:
        for label, extra in variants.items():
            stacks[label] = Stack("resnet18", models_dir / "resnet18.model",
                                  "--workers-per-model", cores, *extra)
        return alternating(stacks, "resnet18", models_dir, connections, rounds, seconds)
    finally:
        for stack in stacks.values():
            stack.stop()


