"""The broker's side of the fork server (worker/forkserver.py): `ForkServer` attaches to the
server a crashed predecessor left running, or starts one, and asks it for workers;
`ForkedProcess` answers like `subprocess.Popen` (pid, poll, wait, send_signal, kill), so
the pool manages forked and spawned workers alike.

Workers outlive the server. The broker is a child subreaper (common/child_processes.py), so
when the server dies the kernel re-parents its workers to the broker: `ForkServer` marks
them adopted and their `ForkedProcess` reaps them with waitpid, like any child. They keep
serving while a new server is started for later forks; a worker whose parent changes ties
its own death to its new parent (worker/main.py).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mxserve.common.proctree import alive
from mxserve.worker.forkserver import READY

log = logging.getLogger("broker.forkserver")

SPAWN_TIMEOUT_S = 5.0  # a fork answers in milliseconds; a server this slow is stuck
STOP_WAIT_S = 5.0
RESTART_AFTER_S = 1.0  # a server that dies at start-up is not restarted in a tight loop


class ForkedProcess:
    """A worker forked by the server, managed like a subprocess.Popen."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump()
            if self.pid in self.server.adopted:
                self.returncode = self._reap_adopted()
            else:
                self.returncode = self.server.exits.pop(self.pid, None)
        return self.returncode

    def _reap_adopted(self) -> int | None:
        """Our own child since its server died: waitpid it."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Not re-parented to us yet (the server's socket closes before its children
            # move), or gone: still running while it is alive.
            if alive(self.pid):
                return None
            self.server.adopted.discard(self.pid)
            return -signal.SIGKILL
        if pid == 0:
            return None
        self.server.adopted.discard(self.pid)
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The broker's handle on its fork server: the one a crashed predecessor left running
    (attached), or one it starts; restarted in the background when it dies."""

    def __init__(self, env: dict[str, str], start: Callable[..., Any], path: Path) -> None:
        """`env`: the environment forked workers must have; `start(argv, env, pass_fds,
        dies_with_parent)`: how to start it (common.child_processes.spawn); `path`:
        its socket, in the run directory."""
        self.env = env
        self._start = start
        self.path = path
        self.exits: dict[int, int] = {}
        self.adopted: set[int] = set()  # workers of a dead server, now our children
        self._children: set[int] = set()
        self._sock: socket.socket | None = None
        self._process: Any = None  # ours when we started it; None when attached
        self._pid = 0  # the server's, from its READY
        self._attachable = True  # False once a running server refused us
        self._buffer = b""
        self.ready = False
        self.started_at = 0.0

    def start(self) -> None:
        sock = self._attach() if self._attachable else None
        if sock is None:
            sock = self._launch()
        sock.sendall((json.dumps({"env": self.env}) + "\n").encode())
        sock.setblocking(False)
        self._sock, self._buffer, self.ready = sock, b"", False
        self.started_at = time.monotonic()

    def _attach(self) -> socket.socket | None:
        """A connection to a server already listening at `path`, if there is one."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(str(self.path))
        except OSError:  # none there (refused, or no such file), or one too stuck to listen
            sock.close()
            return None
        log.info("attaching to the running fork server at %s", self.path)
        return sock

    def _launch(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink(missing_ok=True)  # a dead or refused server's
            listener.bind(str(self.path))
            listener.listen(4)
            # Not tied to the broker's life (no PDEATHSIG): it must outlive a crash.
            self._process = self._start([sys.executable, "-m", "mxserve.worker.forkserver",
                                         str(listener.fileno())], self.env,
                                        pass_fds=(listener.fileno(),), dies_with_parent=False)
        finally:
            listener.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))  # queued until the server has imported MXNet
        return sock

    def keep_running(self) -> None:
        """Start a new server if this one died, so the next fork does not wait for it."""
        self.pump()
        if self._sock is None and time.monotonic() - self.started_at > RESTART_AFTER_S:
            self.start()

    def can_fork(self, env: dict[str, str]) -> bool:
        self.pump()
        if self._sock is None:
            self.start()  # died: restart it (the pool waits for it, then spawns fresh)
            return False
        return self.ready and env == self.env

    def spawn(self, argv: list[str], env: dict[str, str], title: str) -> ForkedProcess:
        """Fork a worker; OSError if the server failed (it is then stopped, its workers
        with it, and restarted later: the caller starts this worker fresh instead)."""
        assert self._sock is not None
        self._sock.settimeout(SPAWN_TIMEOUT_S)
        try:
            self._sock.sendall((json.dumps({"argv": argv, "env": env, "title": title})
                                + "\n").encode())
            pid = None
            while pid is None:
                message = self._read_message(blocking=True)
                if message is None:
                    raise OSError("the fork server closed its socket")
                pid = message.get("pid")
        finally:
            if self._sock is not None:
                self._sock.setblocking(False)
        self._children.add(pid)
        return ForkedProcess(self, pid)

    def pump(self) -> None:
        """Read every message waiting; notice the server's death."""
        while self._sock is not None and self._read_message(blocking=False) is not None:
            pass

    def stop(self) -> None:
        """SIGTERM the server, however it was started (the pool stops the workers)."""
        pid = self._process.pid if self._process is not None else self._pid
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        elif pid:  # attached: not our child, so watched through /proc
            deadline = time.monotonic() + STOP_WAIT_S
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def _read_message(self, blocking: bool) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            assert self._sock is not None
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                return None
            except OSError:  # a timeout (a stuck server) or a reset
                chunk = b""
            if not chunk:
                self._server_gone()
                return None
            self._buffer += chunk
            if not blocking:
                break
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if READY in message:
            self.ready, self._pid = True, message[READY]
        elif "exited" in message:
            self._children.discard(message["exited"])
            self.exits[message["exited"]] = message["code"]
        elif "refused" in message:
            log.warning("the running fork server refused this broker (%s); starting a new "
                        "one", message["refused"])
            self._attachable = False
        return message

    def _server_gone(self) -> None:
        """Make sure it is gone (a stuck one is killed); its workers live on as our
        children (we are a subreaper) and are reaped as such."""
        if self._attachable or self._children:
            log.warning("the worker fork server is gone; its %d worker(s) keep serving as "
                        "the broker's children, and a new server will fork later ones",
                        len(self._children))
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        elif self._process is None and self._pid and alive(self._pid):
            os.kill(self._pid, signal.SIGKILL)
        self.adopted |= self._children
        self._children.clear()
        if self._sock is not None:
            self._sock.close()
        self._sock, self.ready, self._process, self._pid = None, False, None, 0

