"""Starts the real stack (`mxserve start`: gunicorn, broker, workers, MXNet) on a free
loopback port, and finds every process it started, for the integration tests."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from mxserve.common.proctree import alive, cmdline, descendants  # noqa: F401 (re-exported for tests)

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], object], timeout_s: float = 30.0, what: str = "condition",
               every_s: float = 0.1) -> object:
    """Poll `check` until it returns something truthy and return that; a connection error
    counts as "not yet". The one polling loop of the suite: no test sleeps on a guess."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s")
        time.sleep(every_s)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float,
                 output: Callable[[], str]) -> None:
    """Poll GET /ping until 200; fail at once, with the process's output, if it exits."""
    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n"
                               + output()[-3000:])
        return requests.get(url + "/ping", timeout=2).status_code == 200

    try:
        eventually(healthy, timeout_s, "/ping 200", every_s=0.2)
    except AssertionError:
        raise TimeoutError("server not ready:\n" + output()[-3000:]) from None


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """The processes of `pids` still alive after up to `timeout_s`."""
    try:
        eventually(lambda: not any(alive(pid) for pid in pids), timeout_s, "exit")
    except AssertionError:
        pass
    return {pid for pid in pids if alive(pid)}


class Server:
    """`mxserve start` in a child process. As a context manager it waits until ready (or,
    with `until="settled"`, until no model is still loading, or with `until="required"`,
    until /readyz says the required models are ready), and on leaving stops it (if still
    running) and fails the test unless it exited 0."""

    def __init__(self, models: list[str], *extra: str, frontend_workers: int = 2,
                 env: dict[str, str] | None = None, token_file: bool = True,
                 until: str = "ready", grpc: bool = False) -> None:
        """`token_file=False`: no --management-token-file, so the server generates its
        token as a default start does."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        if "--management-port" not in extra:  # two servers at once must not share 8081
            self.management_port = free_port()
            extra = (*extra, "--management-port", str(self.management_port))
        self.admin = f"http://127.0.0.1:{getattr(self, 'management_port', 0)}"
        self.grpc_port = free_port() if grpc else 0
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        if grpc:
            extra = (*extra, "--grpc-port", str(self.grpc_port))
        self.admin_headers: dict[str, str] = {}
        if token_file and "--management-token-file" not in extra and (
                "--no-management-auth" not in extra):
            token = secrets.token_urlsafe(24)
            token_file = tmp / f"mxserve-test-{self.port}.token"
            token_file.write_text(token)
            token_file.chmod(0o600)
            extra = (*extra, "--management-token-file", str(token_file))
            self.admin_headers = {"Authorization": f"Bearer {token}"}
        env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        self.log_path = tmp / f"mxserve-test-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.until = until
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mxserve.instance.cli", "start", "--models", *models,
             "--port", str(self.port), "--frontend-workers", str(frontend_workers), *extra],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        try:
            if self.until == "required":
                return self.wait_required()
            return self.wait_ready() if self.until == "ready" else self.wait_settled()
        except BaseException:
            self.kill_tree()
            raise

    def __exit__(self, failure: type | None, *_: object) -> None:
        """A server the test already stopped or killed is the test's to judge."""
        stopping = self.process.poll() is None
        try:
            code = self.stop()
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise
        if failure is None and stopping:
            assert code == 0, f"mxserve exited {code}:\n" + self.log_text()[-5000:]

    def wait_ready(self, timeout_s: float = 180.0) -> Server:
        wait_healthy(self.url, self.process, timeout_s, self.log_text)
        if self.grpc_port:
            eventually(self._grpc_listening, 30, "the gRPC listener")
        return self

    def _grpc_listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1).close()
            return True
        except OSError:
            return False

    def wait_required(self, timeout_s: float = 180.0) -> Server:
        """/readyz 200: the required models are ready, whatever the others are doing."""
        def ready() -> bool:
            assert self.process.poll() is None, self.log_text()[-3000:]
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200

        eventually(ready, timeout_s, "/readyz 200", every_s=0.2)
        if self.grpc_port:
            eventually(self._grpc_listening, 30, "the gRPC listener")
        return self

    def wait_settled(self, timeout_s: float = 120.0) -> Server:
        """Every model ready or failed (/ping answers, 503 while one has failed)."""
        def settled() -> bool:
            assert self.process.poll() is None, self.log_text()[-3000:]
            models = requests.get(self.url + "/ping", timeout=2).json().get("models")
            return models is not None and "loading" not in models.values()

        eventually(settled, timeout_s, "models settled", every_s=0.2)
        return self

    def processes(self, marker: str) -> list[int]:
        """Live processes under this server whose command line contains `marker`
        (e.g. "worker.broker", "-m worker --archive")."""
        return sorted(pid for pid in descendants(self.process.pid) if marker in cmdline(pid))

    def run_dir(self) -> Path:
        """The instance's run directory, read from its broker's environment."""
        [broker] = self.processes("worker.broker")
        environ = open(f"/proc/{broker}/environ", "rb").read().split(b"\0")
        value = next(v for v in environ if v.startswith(b"MXSERVE_RUN_DIR="))
        return Path(value.split(b"=", 1)[1].decode())

    def catalog(self, timeout_s: float = 5.0) -> dict:
        """The broker's catalog (workers ready, restarts, errors), asked over its own socket."""
        from mxserve.frontend.broker_client import BrokerClient

        return BrokerClient(f"ipc://{self.run_dir()}/frontends.sock").catalog(timeout_s)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (unless it already exited) and its exit code; stopping twice is fine."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            self.log.close()

    def kill_tree(self) -> None:
        for pid in descendants(self.process.pid) | {self.process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait(10)
        self.log.close()
